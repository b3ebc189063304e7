"""train.py with the WKV6 cuda op on the host-emulated build (test-only):

    python -m tests.emulation.train_emulated --wkv_op cuda --accelerator cpu <other train.py args>

Run from the repository root (tests/ is then importable). It installs the emulated builder exactly like the
`emulated_wkv6_cuda` fixture (tests/emulation/fixtures.py) and calls train.py's entry point,
`src.train.launch.main(argv)`. Builds are cached under $TORCH_EXTENSIONS_DIR/wkv6_emulation.
Only single-process runs see the emulation: a launcher that re-runs train.py in new processes would not.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    from tests.emulation.fixtures import install_emulation

    install_emulation(setattr)
    from src.train.launch import main as train_main

    return train_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
