"""The first module a ganforge forkserver imports (`trainer.processes.forkserver_context`),
and only that: the server ignores SIGTERM from here on.

Job processes and DDP ranks fork from a forkserver and follow their parent
(`follow_parent`: they ignore SIGTERM and are killed when the server exits). A SIGTERM meant
for the whole process group (`kill -TERM -PGID`, systemd's control-group stop) would otherwise
end the server at once and take every running job with it, before the worker could checkpoint
them; ignoring it, the server lives until its client (the worker or rank 0) is gone, as it
exits when the client's end of its pipe closes. Never import this module anywhere else.
"""

from __future__ import annotations

import signal

signal.signal(signal.SIGTERM, signal.SIG_IGN)
