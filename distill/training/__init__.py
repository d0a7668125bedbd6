"""Training the student: TRL configuration (config), the SFT fit (sft), CPU speed-ups (cpu),
and the same fit under Ray Train (ray_train). Below the stages: nothing here knows the pipeline."""
