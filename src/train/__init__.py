"""Training: flags (args), planning and checks (plan), reports, the Lightning wiring (fit, module, strategy,
checkpointing, metrics) and train.py's launch layer (launch)."""
