"""Userspace drivers built on vfiokit.vfio."""
