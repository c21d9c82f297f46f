"""The durable stack's pieces on real processes: the object store (Tansu's storage), the broker on
it, Redis with its AOF, and the data folder's ports and lock."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx
import pytest
import redis
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from producers.client import EventProducer
from rtrec.cli import build_parser
from rtrec.errors import StackError
from rtrec.events import Event
from rtrec.stack.broker import Broker, ensure_topics, s3_environment
from rtrec.settings import Settings
from rtrec.stack.launcher import DATA_DIR_FORMAT, DataDirLock, LocalStack, StackOptions, StackState, port_is_free
from rtrec.stack.object_store import ObjectStoreServer
from rtrec.stack.redis_server import RedisServer
from tests.kafka_helpers import consume_all


@pytest.fixture
def object_store(tmp_path: Path):  # type: ignore[no-untyped-def]
    server = ObjectStoreServer(tmp_path / "objects", tmp_path / "object-store.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.integration
def test_object_store_writes_conditionally_like_s3_and_keeps_objects_across_a_restart(
        object_store: ObjectStoreServer, tmp_path: Path) -> None:
    with httpx.Client(base_url=object_store.endpoint) as http:
        created = http.put("/b/t/watermark.json", content=b'{"high":1}', headers={"If-None-Match": "*"})
        assert created.status_code == 200
        etag = created.headers["etag"]
        assert http.put("/b/t/watermark.json", content=b"x", headers={"If-None-Match": "*"}).status_code == 412
        assert http.put("/b/t/watermark.json", content=b"x", headers={"If-Match": '"stale"'}).status_code == 412
        updated = http.put("/b/t/watermark.json", content=b'{"high":2}', headers={"If-Match": etag})
        assert updated.status_code == 200 and updated.headers["etag"] != etag
        assert http.get("/b/t/watermark.json", headers={"If-None-Match": updated.headers["etag"]}).status_code == 304
        got = http.get("/b/t/watermark.json", headers={"If-None-Match": etag})
        assert (got.status_code, got.content, got.headers["etag"]) == (200, b'{"high":2}', updated.headers["etag"])
        assert "last-modified" in got.headers
        part = http.get("/b/t/watermark.json", headers={"Range": "bytes=1-6"})
        assert (part.status_code, part.content, part.headers["content-range"]) == (206, b'"high"', "bytes 1-6/10")
        for n in range(5):
            assert http.put(f"/b/t/records/{n:020d}.batch", content=bytes([n])).status_code == 200
        keys, token = [], None
        while True:  # ListObjectsV2, two keys a page
            page = http.get("/b", params={"list-type": "2", "prefix": "t/records/", "max-keys": "2",
                                          **({"continuation-token": token} if token else {})}).text
            keys += [k.split("</Key>")[0] for k in page.split("<Key>")[1:]]
            if "<IsTruncated>true</IsTruncated>" not in page:
                break
            token = page.split("<NextContinuationToken>")[1].split("<")[0]
        assert keys == [f"t/records/{n:020d}.batch" for n in range(5)]
        folders = http.get("/b", params={"list-type": "2", "prefix": "t/", "delimiter": "/"}).text
        assert "<Prefix>t/records/</Prefix>" in folders and "<Key>t/watermark.json</Key>" in folders
        assert http.delete("/b/t/records/00000000000000000000.batch").status_code == 204
        assert http.get("/b/t/records/00000000000000000000.batch").status_code == 404
        gone = [f"t/records/{n:020d}.batch" for n in (1, 2)]
        body = "<Delete>" + "".join(f"<Object><Key>{k}</Key></Object>" for k in gone) + "</Delete>"
        assert http.post("/b", params={"delete": ""}, content=body).status_code == 200
        listed = http.get("/b", params={"list-type": "2", "prefix": "t/records/"}).text
        assert [k.split("</Key>")[0] for k in listed.split("<Key>")[1:]] == [
            f"t/records/{n:020d}.batch" for n in (3, 4)]
        assert http.get("/b/../etc/passwd").status_code in (400, 404)
    object_store.stop()
    again = ObjectStoreServer(object_store.root, tmp_path / "object-store.log")
    again.start()
    try:
        with httpx.Client(base_url=again.endpoint) as http:
            kept = http.head("/b/t/watermark.json")
            assert kept.status_code == 200 and kept.headers["etag"] == updated.headers["etag"]
            assert http.put("/b/t/watermark.json", content=b"y", headers={"If-Match": etag}).status_code == 412
    finally:
        again.stop()
    assert "flushed" in (tmp_path / "object-store.log").read_text()  # the final syncfs at SIGTERM


@pytest.mark.integration
def test_broker_on_the_object_store_keeps_its_log_and_committed_offsets_across_a_restart(
        object_store: ObjectStoreServer, tmp_path: Path) -> None:
    def broker() -> Broker:
        b = Broker(tmp_path, storage="s3://tansu/", storage_env=s3_environment(object_store.endpoint))
        b.start()
        return b

    first = broker()
    try:
        ensure_topics(first.bootstrap, ["t"], 3)
        with EventProducer(first.bootstrap, "t") as producer:
            producer.send_many([Event(f"e{n}", f"u{n % 7}", "i", "click", 1.0 + n) for n in range(300)])
        consumer = KafkaConsumer(bootstrap_servers=first.bootstrap, group_id="g", enable_auto_commit=False)
        parts = [TopicPartition("t", p) for p in range(3)]
        consumer.assign(parts)
        consumer.commit({tp: OffsetAndMetadata(tp.partition + 1, None, -1) for tp in parts})
        consumer.close()
    finally:
        first.stop()  # SIGKILL after 2 s: Tansu acknowledged every write only once it was stored
    second = broker()
    try:
        events = consume_all(second.bootstrap, "t", 300)
        assert sorted(e["event_id"] for e in events) == sorted(f"e{n}" for n in range(300))
        consumer = KafkaConsumer(bootstrap_servers=second.bootstrap, group_id="g", enable_auto_commit=False)
        assert [consumer.committed(TopicPartition("t", p)) for p in range(3)] == [1, 2, 3]
        assert len(consumer.partitions_for_topic("t")) == 3
        consumer.close()
    finally:
        second.stop()


@pytest.mark.integration
def test_redis_with_a_data_dir_replays_its_append_only_file_after_a_restart(tmp_path: Path) -> None:
    def server() -> RedisServer:
        r = RedisServer(tmp_path / "logs", data_dir=tmp_path / "redis")
        r.start()
        return r

    first = server()
    try:
        client = redis.Redis.from_url(first.url)
        client.hset("rtrec:items", mapping={"i1": "c1", "i2": ""})
        client.set("rtrec:wm", "12.5")
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
    finally:
        first.stop()
    assert (tmp_path / "redis" / "appendonly.aof").exists()
    second = server()
    try:
        client = redis.Redis.from_url(second.url)
        assert client.hgetall("rtrec:items") == {b"i1": b"c1", b"i2": b""}
        assert client.get("rtrec:wm") == b"12.5"
    finally:
        second.stop()


@pytest.mark.integration
def test_ephemeral_redis_writes_no_file(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        assert client.config_get("appendonly") == {"appendonly": "no"}
    finally:
        server.stop()
    assert not list(tmp_path.glob("*.aof")) and not list(tmp_path.glob("*.rdb"))


def test_recorded_ports_are_reused_while_free_and_replaced_when_taken(tmp_path: Path) -> None:
    path = tmp_path / "stack.json"
    kafka, redis_port = StackState(path).port("kafka"), StackState(path).port("redis")
    assert kafka != redis_port
    assert StackState(path).port("kafka") == kafka
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", kafka))
        squatter.listen()
        moved = StackState(path).port("kafka")
    assert moved not in (kafka, redis_port)
    assert json.loads(path.read_text())["ports"] == {"kafka": moved, "redis": redis_port}


def test_a_data_dir_refuses_another_shard_count(tmp_path: Path) -> None:
    state = StackState(tmp_path / "stack.json")
    state.record_shards(2)
    StackState(tmp_path / "stack.json").check_shards(2)
    with pytest.raises(StackError, match="--param-servers 2"):
        StackState(tmp_path / "stack.json").check_shards(1)


def test_a_data_dir_is_used_by_one_stack_at_a_time(tmp_path: Path) -> None:
    lock = DataDirLock(tmp_path)
    with pytest.raises(StackError, match="in use"):
        DataDirLock(tmp_path)
    lock.release()
    DataDirLock(tmp_path).release()


def test_up_takes_a_data_dir_or_ephemeral_not_both() -> None:
    parser = build_parser()
    assert parser.parse_args(["up"]).data_dir is None and not parser.parse_args(["up"]).ephemeral
    assert parser.parse_args(["up", "--data-dir", "d"]).data_dir == Path("d")
    assert parser.parse_args(["up", "--ephemeral"]).ephemeral
    with pytest.raises(SystemExit):
        parser.parse_args(["up", "--ephemeral", "--data-dir", "d"])


def test_a_port_in_time_wait_counts_as_free() -> None:
    """As after a restart: the servers of the stack (Redis, uvicorn, Tansu) all bind with SO_REUSEADDR."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert not port_is_free("127.0.0.1", port)
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server side closes first: its end of the connection waits in TIME_WAIT
        client.close()
    time.sleep(0.05)
    assert port_is_free("127.0.0.1", port)


def test_a_data_folder_of_another_format_is_refused_before_anything_is_read(tmp_path: Path):
    path = tmp_path / "stack.json"
    StackState(path).port("kafka")
    assert json.loads(path.read_text())["format"] == DATA_DIR_FORMAT
    path.write_text(json.dumps({"format": DATA_DIR_FORMAT + 1, "ports": {"kafka": 1}}))
    with pytest.raises(StackError, match=f"format is {DATA_DIR_FORMAT + 1}; this one reads format {DATA_DIR_FORMAT}"):
        StackState(path)
    assert json.loads(path.read_text())["format"] == DATA_DIR_FORMAT + 1  # left as it was


def test_a_stack_refuses_a_data_folder_of_another_format_and_frees_its_lock(tmp_path: Path):
    (tmp_path / "stack.json").write_text(json.dumps({"format": 99, "ports": {}}))
    with pytest.raises(StackError, match="format is 99"):
        LocalStack(Settings(), StackOptions(data_dir=tmp_path, components=False))
    LocalStack(Settings(), StackOptions(data_dir=tmp_path / "other", components=False)).stop()
    (tmp_path / "stack.json").write_text(json.dumps({"format": DATA_DIR_FORMAT, "ports": {}}))
    stack = LocalStack(Settings(), StackOptions(data_dir=tmp_path, components=False))  # the lock was freed
    stack.stop()
