"""The embedded local stack: real servers on free loopback ports, owned by the process that starts them."""
