"""Run ``mobiledl`` commands in child processes forked from one warmed-up interpreter.

The kill test starts a command, ``kill -9``s it, and restarts it more than ten times; paying
the interpreter's start-up (importing torch, scikit-learn, ONNX: seconds on a loaded machine)
each time would make the test slow. This server imports them once, then for each request
forks a child that runs ``mobiledl.cli.main(argv)`` with stdout and stderr sent to files: a
separate process the test can ``SIGKILL`` like any other.

Protocol: one JSON request per line on stdin, one JSON reply per line on stdout.

- ``{"argv": [...], "stdout": PATH, "stderr": PATH}`` -> ``{"pid": PID}``
- ``{"wait": PID}`` -> ``{"exit": CODE}`` or ``{"signal": NUMBER}`` once the child has ended
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def _warm_up() -> None:
    """Import what a ``train`` or ``run`` command imports, before any child is forked."""
    import sklearn.datasets  # noqa: F401  (the digits task)
    import torch
    import torch._dynamo  # noqa: F401  (imported by the optimizers' first step)

    import mobiledl.measure  # noqa: F401  (ONNX export and ONNX Runtime)
    import mobiledl.pipeline  # noqa: F401
    from mobiledl.core.methods import load_plugins

    torch.set_num_threads(1)  # no thread pool in the parent: forking stays safe
    load_plugins()


def _child(request: dict) -> None:
    from mobiledl.cli import main

    code = 1
    try:
        for fd, name in ((1, "stdout"), (2, "stderr")):
            target = os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        code = main(request["argv"])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    _warm_up()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if "argv" in request:
            pid = os.fork()
            if pid == 0:
                _child(request)
            reply = {"pid": pid}
        else:
            _, status = os.waitpid(request["wait"], 0)
            if os.WIFSIGNALED(status):
                reply = {"signal": os.WTERMSIG(status)}
            else:
                reply = {"exit": os.WEXITSTATUS(status)}
        print(json.dumps(reply), flush=True)
    os._exit(0)  # skip the interpreter's slow teardown of torch


if __name__ == "__main__":
    serve()
