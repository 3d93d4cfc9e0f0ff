"""uio_pci_generic from Python: a device's maps and its INTx with Intx's interface.

See :mod:`vfiokit.uio.device`; :mod:`vfiokit.uio.fake` models the kernel for tests.
"""

from .device import DRIVER, POLICIES, UioDevice, UioIntx
from .sys import RealUioSyscalls, UioSyscalls

__all__ = ["DRIVER", "POLICIES", "RealUioSyscalls", "UioDevice", "UioIntx", "UioSyscalls"]
