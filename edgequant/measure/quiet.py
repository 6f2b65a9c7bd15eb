"""Imported first by the benchmark's fork server, a process no stage entry point runs in: the stages' noise filter for it."""

from edgequant.stage import quiet_known_upstream_noise

quiet_known_upstream_noise()  # before the server preloads torchao and ExecuTorch, which log on import
