"""The live mirror: a live capture source, replay's sender and compare's comparison running
together. The one stage that imports capture, replay and compare."""
