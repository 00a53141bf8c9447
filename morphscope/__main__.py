"""``python -m morphscope``: the ``morphscope`` command (``morphscope.cli.main`` run as a script)."""

import runpy

if __name__ == "__main__":
    runpy.run_module("morphscope.cli.main", run_name="__main__", alter_sys=True)
