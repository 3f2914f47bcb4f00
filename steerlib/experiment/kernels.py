"""How the chain runner starts and stops the notebooks' kernels: quietly.

* **IPC transport.** The runner and its kernels share a machine, so they talk over Unix
  sockets instead of TCP on the loopback, which ipykernel warns about ("Kernel is running
  over TCP without encryption") once per kernel. Each kernel gets sockets of its own, named
  by a fresh random token in the system's temporary folder: ``jupyter_client``'s default
  name (``kernel-ipc-N`` in the working folder, N the first free number) is chosen before
  the kernel binds it, so two runs started at once from one folder could pick the same
  sockets and read each other's messages ("Invalid Signature").
* **No interrupt at shutdown.** ``jupyter_client`` interrupts a kernel (SIGINT to its process
  group) before asking it to shut down, to unblock a busy one. A notebook the runner shuts
  down has finished (its last reply received), so the signal can only land in whatever the
  kernel is doing at that instant, which ipykernel logs as
  ``[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel.`` on a successful run.
  :class:`QuietShutdownKernelManager` skips that interrupt; a kernel that does not exit on
  the shutdown request is still killed after ``shutdown_wait_time``, and interrupts asked for
  while a cell runs (papermill's timeouts) are sent as before.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from typing import Any

from jupyter_client.manager import AsyncKernelManager
from traitlets.config import Config

__all__ = ["QuietShutdownKernelManager", "kernel_options"]


class QuietShutdownKernelManager(AsyncKernelManager):
    """An ``AsyncKernelManager`` that shuts an idle kernel down without interrupting it."""

    async def _async_interrupt_kernel(self) -> None:
        if self.shutting_down:
            return
        await super()._async_interrupt_kernel()


def kernel_options() -> dict[str, Any]:
    """Keyword arguments for ``papermill.execute_notebook``: the manager class, IPC transport."""
    config = Config()
    config.KernelManager.transport = "ipc"
    config.KernelManager.ip = os.path.join(
        tempfile.gettempdir(), f"steerlib-kernel-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    )
    return {"kernel_manager_class": QuietShutdownKernelManager, "config": config}
