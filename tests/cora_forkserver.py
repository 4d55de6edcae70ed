"""A fork server for tests that start many short ``cora`` runs (tests/test_crash_resume.py).

``python tests/cora_forkserver.py`` imports cora's command line and training stack once, then
reads one JSON request a line on stdin, ``{"args": [...], "env": {...}, "stdout": path, "stderr":
path}``. For each it forks a process that runs ``cora ARGS`` exactly as ``python -m cora`` does
(``cora.cli.main()``), with ``env`` added to its environment and its output in the two files, and
answers one line: the child's exit status (``-9`` when it was SIGKILLed).

Why: importing torch, transformers and peft is ~5 s of a tiny run's ~6 s, and the kill -9 tests
start ~20 runs. The server itself runs nothing after the imports (no torch op, no thread pool,
one thread), so each child starts like a fresh process, and every run, killed or reference,
goes through the same code with the same thread count.
"""

import json
import os
import sys

import cora.cf.train  # noqa: F401  (the imports are the point: children start with them done)
import cora.cli
import cora.experiment.command  # noqa: F401
import cora.train.run  # noqa: F401


def _child(request: dict) -> int:
    for fd, name in ((1, "stdout"), (2, "stderr")):
        out = os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, fd)
        os.close(out)
    os.environ.update(request["env"])
    sys.argv = ["cora", *request["args"]]
    try:
        cora.cli.main()
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else int(e.code is not None)
    except BaseException:
        import traceback

        traceback.print_exc()
        return 1


def main() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(request)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)  # never return into the server's loop
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), flush=True)


if __name__ == "__main__":
    main()
