"""``python -m server``: parse settings, set up logging, run the server until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    from server.config import load_config
    from server.logs import configure_logging

    try:
        config = load_config(argv)
    except ValueError as exc:
        print(f"python -m server: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_format, config.log_level)
    from server.config import effective_workers
    if config.worker_index < 0 and effective_workers(config) >= 2:
        # Several serving processes: this one supervises and never imports gRPC or ORT.
        from server.cluster.supervisor import supervise
        return supervise(config, list(sys.argv[1:] if argv is None else argv))
    supervisor_pid = None
    if config.worker_index >= 0:
        from server.cluster.supervisor import die_with_parent
        supervisor_pid = os.getppid()
        die_with_parent()
    from server.app import serve

    loop_factory = None
    try:
        import uvloop  # a faster event loop: measurably less CPU per request
        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    from server.core.errors import StartupError
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve(config))
    except StartupError as exc:
        logging.getLogger("server").error("%s", exc)
        logging.shutdown()
        return 1
    finally:
        if supervisor_pid is not None:
            from server.cluster.supervisor import remove_orphaned_folder
            remove_orphaned_folder(config.worker_dir, supervisor_pid)
    logging.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
