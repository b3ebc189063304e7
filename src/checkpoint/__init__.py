"""Checkpoint I/O: `files` writes any file atomically and imports no model code; `io` reads official RWKV
checkpoints into models (`read_checkpoint`, `load_rwkv`) and writes them back (`save_official`)."""
