"""Parallelism: pipeline schedules (1F1B, ZB1P, DualPipe, DualPipeV) and expert parallelism."""
