"""The device side: the bench bundle and its runner, Ethos-U estimates, Arm numerics under emulation."""
