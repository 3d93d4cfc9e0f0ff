// SPDX-License-Identifier: GPL-2.0-only
/*
 * vfiokit-pci: the INTx state page, a read-only device-specific region that
 * user space maps once and reads before each unmask without a syscall
 * (struct vfiokit_intx_page in vfiokit_pci_uapi.h).
 *
 * The page lives as long as the device (init_dev to release_dev); the region
 * is registered on every open, since vfio_pci_core_disable() drops the
 * device-specific regions at close. A mapping takes a reference on the page
 * (vm_insert_page()), and an open mapping keeps the device fd, hence the
 * device, alive anyway.
 *
 * The stores are plain WRITE_ONCE()s with no flush_dcache_page(): enough
 * where data caches do not alias (x86, arm64), the only architectures the
 * module is built for. A reader woken by the trigger eventfd sees the
 * handler's store: it was made under kdev->lock before the signal, whose
 * wait-queue lock the reader's read() takes too.
 */

#include <linux/gfp.h>
#include <linux/mm.h>
#include <linux/uaccess.h>
#include <linux/vfio.h>

#include "vfiokit_pci.h"

int vfiokit_intx_page_alloc(struct vfiokit_pci_device *kdev)
{
	kdev->intx_page = (struct vfiokit_intx_page *)get_zeroed_page(GFP_KERNEL);
	if (!kdev->intx_page)
		return -ENOMEM;
	kdev->intx_page->version = 1;
	return 0;
}

void vfiokit_intx_page_free(struct vfiokit_pci_device *kdev)
{
	free_page((unsigned long)kdev->intx_page);
	kdev->intx_page = NULL;
}

static struct vfiokit_pci_device *
region_kdev(struct vfio_pci_core_device *vdev)
{
	return container_of(vdev, struct vfiokit_pci_device, core);
}

static ssize_t vfiokit_intx_page_rw(struct vfio_pci_core_device *vdev,
				    char __user *buf, size_t count,
				    loff_t *ppos, bool iswrite)
{
	struct vfiokit_pci_device *kdev = region_kdev(vdev);
	loff_t pos = *ppos & VFIO_PCI_OFFSET_MASK;

	if (iswrite)
		return -EINVAL;
	if (pos >= PAGE_SIZE)
		return -EINVAL;
	count = min_t(size_t, count, PAGE_SIZE - pos);
	if (copy_to_user(buf, (u8 *)kdev->intx_page + pos, count))
		return -EFAULT;
	*ppos += count;
	return count;
}

static int vfiokit_intx_page_mmap(struct vfio_pci_core_device *vdev,
				  struct vfio_pci_region *region,
				  struct vm_area_struct *vma)
{
	struct vfiokit_pci_device *kdev = region_kdev(vdev);
	unsigned long pgoff = vma->vm_pgoff &
		((1UL << (VFIO_PCI_OFFSET_SHIFT - PAGE_SHIFT)) - 1);

	if (pgoff || vma->vm_end - vma->vm_start != PAGE_SIZE)
		return -EINVAL;
	if (vma->vm_flags & (VM_WRITE | VM_EXEC))
		return -EPERM;
	/* No mprotect() to writable or executable later, no mremap() to grow it. */
	vm_flags_mod(vma, VM_DONTEXPAND | VM_DONTDUMP, VM_MAYWRITE | VM_MAYEXEC);
	return vm_insert_page(vma, vma->vm_start, virt_to_page(kdev->intx_page));
}

/* The page is the device's, freed with it: nothing to drop at close. */
static void vfiokit_intx_page_release(struct vfio_pci_core_device *vdev,
				      struct vfio_pci_region *region)
{
}

static const struct vfio_pci_regops vfiokit_intx_page_ops = {
	.rw		= vfiokit_intx_page_rw,
	.mmap		= vfiokit_intx_page_mmap,
	.release	= vfiokit_intx_page_release,
};

/* From open_device, between vfio_pci_core_enable() and _finish_enable(). */
int vfiokit_intx_page_register(struct vfiokit_pci_device *kdev)
{
	WRITE_ONCE(kdev->intx_page->mode, VFIOKIT_INTX_OFF);
	WRITE_ONCE(kdev->intx_page->mask_device, 0);
	return vfio_pci_core_register_dev_region(&kdev->core,
						 VFIOKIT_REGION_TYPE,
						 VFIOKIT_REGION_SUBTYPE_INTX_PAGE,
						 &vfiokit_intx_page_ops,
						 PAGE_SIZE,
						 VFIO_REGION_INFO_FLAG_READ |
						 VFIO_REGION_INFO_FLAG_MMAP,
						 kdev);
}
