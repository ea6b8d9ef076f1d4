"""The worker: holds one capacity slot and runs queued tasks.

loop (the named steps), picking, executing, held tasks, the lease heartbeat, batched deletes;
its clock is chalicelib.clock.WorkerClock.
"""
