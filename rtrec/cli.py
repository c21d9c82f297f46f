"""The ``rtrec`` command line: one subcommand per process of the system (see CONTRACT.md).

Machine-readable results (the ready line, JSON summaries) go to stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from rtrec.errors import RtrecError
from rtrec.logs import configure_logging
from rtrec.settings import Settings, load_settings

log = logging.getLogger("rtrec")

#: Where ``rtrec up`` keeps its state unless told ``--data-dir`` or ``--ephemeral``.
DEFAULT_DATA_DIR = Path(".rtrec")


class StopFlag:
    """Set by SIGINT/SIGTERM so long loops end cleanly (flush, print their summary).

    The handler only flips a boolean: taking a lock (logging, threading.Event) inside a signal
    handler deadlocks when a second signal lands while the first handler holds it.
    """

    def __init__(self) -> None:
        self._signal: int | None = None
        self._logged = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._set)

    def _set(self, signum: int, _frame: object) -> None:
        self._signal = signum

    def __call__(self) -> bool:
        if self._signal is not None and not self._logged:
            self._logged = True
            log.info("received %s, stopping", signal.Signals(self._signal).name)
        return self._signal is not None

    def wait(self, timeout_s: float) -> bool:
        """Sleep up to ``timeout_s``, returning early (True) once a stop signal arrived."""
        deadline = time.monotonic() + timeout_s
        while not self() and time.monotonic() < deadline:
            time.sleep(0.05)
        return self()


#: Seconds between two rounds of ``rtrec up``'s supervision (a dead component's first restart
#: waits 0.5 s: rounds must be shorter).
SUPERVISE_EVERY_S = 0.2


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from rtrec.stack.launcher import LocalStack, StackOptions
    from rtrec.stack.supervision import ComponentKeepsDying

    stop = StopFlag()
    if args.serving_processes is not None:  # the components read their settings from the environment
        os.environ["RTREC_SERVING_PROCESSES"] = str(args.serving_processes)
    options = StackOptions(simulate=not args.no_simulate, simulate_rate=args.rate,
                           param_servers=args.param_servers, workers=args.workers,
                           redis_cluster=args.redis_cluster,
                           data_dir=None if args.ephemeral or (args.redis_cluster and args.data_dir is None)
                           else args.data_dir or DEFAULT_DATA_DIR)
    stack = LocalStack(settings, options)
    try:
        info = stack.start()
        print(info.as_line(), flush=True)
        log.info("stack ready; %s; logs in %s; Ctrl-C or SIGTERM stops it",
                 f"state in {stack.data_dir} (resumed by the next `rtrec up` on it)" if stack.durable
                 else "ephemeral (state deleted at stop)", stack.workdir)
        while not stop.wait(SUPERVISE_EVERY_S):
            try:
                stack.supervise(should_stop=stop)  # restarts what died; in this thread, so never during stop()
            except ComponentKeepsDying as exc:
                log.error("a component keeps dying, stopping the stack: %s", exc)
                return 1
        return 0
    finally:
        stack.stop()


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from producers.simulate import run_simulation
    from producers.simulator import ClickSimulator, SimulatorConfig
    from rtrec.metrics_http import serve_metrics

    stop = StopFlag()
    serve_metrics(settings.metrics_port, settings.metrics_host)
    sim = ClickSimulator(SimulatorConfig(users=args.users, items=args.items, seed=args.seed))
    with _producer(settings) as producer:
        summary = run_simulation(sim, producer.send, args.rate, args.duration, should_stop=stop)
    print(json.dumps(summary), flush=True)
    return 0


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from producers.replay import load_events, parse_columns, replay

    stop = StopFlag()
    if args.dataset:
        from producers.datasets import load_dataset

        events, skipped = load_dataset(args.dataset)[: args.limit], {}
    else:
        if args.file is None:
            raise RtrecError("give a FILE or --dataset NAME")
        loaded = load_events(Path(args.file), parse_columns(args.columns), args.action, args.limit)
        events, skipped = loaded.events, dict(loaded.skipped)
    speed = None if args.as_fast_as_possible else args.speed
    with _producer(settings) as producer:
        summary = replay(events, len(events), producer.send, speed, should_stop=stop,
                         progress=not args.no_progress)
    summary = {"sent": summary["sent"], "skipped": sum(skipped.values()), "seconds": summary["seconds"],
               "skipped_reasons": skipped}
    print(json.dumps(summary), flush=True)
    return 0


def cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    from evaluation.cli import run

    return run(args, settings.torch_threads)


def _producer(settings: Settings):
    from producers.client import EventProducer

    return EventProducer(settings.kafka, settings.actions_topic, settings.producer_linger_ms,
                         settings.producer_batch_bytes)


def cmd_component(name: str, module: str, issue: str) -> Callable[[argparse.Namespace, Settings], int]:
    """A subcommand that runs ``module.main(settings)``, or says which issue will bring it."""

    def run(args: argparse.Namespace, settings: Settings) -> int:
        from rtrec.stack.launcher import component_available

        if getattr(args, "processes", None) is not None:
            settings = load_settings(serving_processes=args.processes)

        if not component_available(module):
            log.error("rtrec %s is not built yet (%s)", name, issue)
            return 2
        import importlib

        importlib.import_module(module).main(settings)
        return 0

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtrec", description="rtrec: a real-time recommender.")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole local stack in the foreground")
    up.add_argument("--no-simulate", action="store_true", help="start without synthetic traffic")
    up.add_argument("--rate", type=float, default=200.0, help="simulated events/s (default 200)")
    up.add_argument("--param-servers", type=int, default=1, help="parameter-server shards")
    up.add_argument("--workers", type=int, default=1, help="stream worker processes")
    up.add_argument("--serving-processes", type=int, default=None,
                    help="serving processes behind serving's port (default RTREC_SERVING_PROCESSES, 1)")
    up.add_argument("--redis-cluster", type=int, default=0, metavar="N",
                    help="run the feature store on a local Redis Cluster of N masters (in memory, so the "
                         "stack is ephemeral), sharded by user over N hash tags")
    keep = up.add_mutually_exclusive_group()
    keep.add_argument("--data-dir", type=Path, default=None,
                      help=f"keep the broker's log, Redis's AOF and the parameter-server snapshots here and "
                           f"resume from them at the next start (default {DEFAULT_DATA_DIR}/)")
    keep.add_argument("--ephemeral", action="store_true",
                      help="keep everything in memory and a temporary folder, deleted at stop")
    up.set_defaults(func=cmd_up)

    sim = sub.add_parser("simulate", help="stream synthetic clicks into Kafka")
    sim.add_argument("--rate", type=float, default=200.0, help="events per second")
    sim.add_argument("--duration", type=float, default=60.0, help="seconds to run")
    sim.add_argument("--users", type=int, default=2_000)
    sim.add_argument("--items", type=int, default=5_000)
    sim.add_argument("--seed", type=int, default=0)
    sim.set_defaults(func=cmd_simulate)

    rep = sub.add_parser("replay", help="replay a CSV/JSONL event log into Kafka in timestamp order")
    rep.add_argument("file", nargs="?", help="CSV, TSV or JSONL file")
    rep.add_argument("--dataset", choices=["ml-100k"], help="replay a bundled dataset instead of a file")
    rep.add_argument("--columns", help="event field=file column, comma-separated, e.g. user_id=userId,ts=timestamp")
    rep.add_argument("--action", default="click", help="action for rows without one (default click)")
    pace = rep.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=None, help="replay X times faster than recorded")
    pace.add_argument("--as-fast-as-possible", action="store_true", help="no pacing (the default without --speed)")
    rep.add_argument("--limit", type=int, default=None, help="replay at most N events")
    rep.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    rep.set_defaults(func=cmd_replay)

    from evaluation.cli import add_arguments as add_eval_arguments

    ev = sub.add_parser("eval", help="prequential evaluation on logged data, with baselines and a report")
    add_eval_arguments(ev)
    ev.set_defaults(func=cmd_eval)

    for name, module, issue, text in (
        ("param-server", "param_server.main", "issue 3", "run one parameter-server shard"),
        ("worker", "stream_workers.main", "issue 4", "run one stream worker"),
        ("serve", "serving.main", "issue 5", "run the serving HTTP API"),
    ):
        command = sub.add_parser(name, help=text)
        command.set_defaults(func=cmd_component(name, module, issue))
        if name == "serve":
            command.add_argument("--processes", type=int, default=None,
                                 help="serving processes behind the one port (default RTREC_SERVING_PROCESSES, 1)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = load_settings()
    configure_logging(settings.log_level)
    try:
        return args.func(args, settings)
    except RtrecError as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
