"""``resetfree-bench`` and the drills that drive the whole system: faults and hostile
traffic, runtime timing under load, the learning suite, the cube OOD experiment."""
