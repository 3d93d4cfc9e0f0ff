// SPDX-License-Identifier: GPL-2.0-only
/*
 * vfiokit-pci: a VFIO PCI variant driver with adaptive INTx masking.
 *
 * Everything but INTx is vfio_pci_core's. This file holds the small wrappers
 * that route INTx to intx.c and keep the core's own INTx code out of the way:
 * the core's pci_2_3 is cleared after enabling so that the core never touches
 * INTx Disable behind our back, and its irq_type stays "none" while our INTx
 * is on, so MSI/MSI-X are gated here.
 *
 * Bind with: echo vfiokit-pci > /sys/bus/pci/devices/<BDF>/driver_override
 */

#include <linux/module.h>
#include <linux/pci.h>
#include <linux/pm_runtime.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/vfio.h>

#include "vfiokit_pci.h"

#define VFIOKIT_PCI_VERSION "0.1.0"

/*
 * As vfio_pci.nointxmask. Up to 6.12 vfio_pci_core applied vfio-pci's
 * parameter to every core device, variant drivers included; since then
 * vfio-pci latches it into its own devices only (vdev->nointxmask), so a
 * variant driver needs a parameter of its own to force the fallback.
 */
static bool nointxmask;
module_param(nointxmask, bool, 0444);
MODULE_PARM_DESC(nointxmask,
		 "Do not mask INTx at the device: an exclusive line, masked at the line (vfio-pci's fallback for devices without PCI 2.3 INTx masking)");

static int vfiokit_pci_init_dev(struct vfio_device *core_vdev)
{
	struct vfiokit_pci_device *kdev = to_kdev(core_vdev);
	int ret;

	/* First: a failed init is not followed by release_dev. */
	ret = vfiokit_intx_page_alloc(kdev);
	if (ret)
		return ret;
	ret = vfio_pci_core_init_dev(core_vdev);
	if (ret) {
		vfiokit_intx_page_free(kdev);
		return ret;
	}
	mutex_init(&kdev->intx_lock);
	spin_lock_init(&kdev->lock);
	return 0;
}

static void vfiokit_pci_release_dev(struct vfio_device *core_vdev)
{
	struct vfiokit_pci_device *kdev = to_kdev(core_vdev);

	mutex_destroy(&kdev->intx_lock);
	vfiokit_intx_page_free(kdev);
	vfio_pci_core_release_dev(core_vdev);
}

/*
 * vfio_pci_core_disable() restores the config space saved at open, with
 * INTx Disable clear, before its reset and several other steps, long before
 * our close can set the bit again: a device that still asserts then storms
 * its line with no handler of ours left, and on a shared line the spurious
 * detector disables it for every sharer ("nobody cared"; under a storm the
 * CPU barely advances, so even a short window is enough). Set the bit in
 * the saved copy itself, through the PCI core's exported helpers, so that
 * the restore leaves the device masked. The copy is only read back at
 * close; the next pci_enable_device() clears the bit for the next driver.
 */
static void vfiokit_pci_save_intx_masked(struct vfio_pci_core_device *vdev)
{
	struct pci_dev *pdev = vdev->pdev;
	struct pci_saved_state *state;

	if (!vdev->pci_saved_state ||
	    pci_load_saved_state(pdev, vdev->pci_saved_state))
		return;
	pdev->saved_config_space[PCI_COMMAND / 4] |= PCI_COMMAND_INTX_DISABLE;
	state = pci_store_saved_state(pdev);
	if (!state)
		return;	/* the close below still sets the bit, later */
	kfree(vdev->pci_saved_state);
	vdev->pci_saved_state = state;
}

/* Tells vfiokit_intx_restored() whether the device state is ours. */
static void vfiokit_pci_set_opened(struct vfiokit_pci_device *kdev, bool opened)
{
	unsigned long flags;

	spin_lock_irqsave(&kdev->lock, flags);
	kdev->opened = opened;
	spin_unlock_irqrestore(&kdev->lock, flags);
}

static int vfiokit_pci_open_device(struct vfio_device *core_vdev)
{
	struct vfiokit_pci_device *kdev = to_kdev(core_vdev);
	struct vfio_pci_core_device *vdev = &kdev->core;
	int ret;

	ret = vfio_pci_core_enable(vdev);
	if (ret)
		return ret;
	ret = vfiokit_intx_page_register(kdev);
	if (ret) {
		vfio_pci_core_disable(vdev);
		return ret;
	}

	/* From here on intx.c alone owns the device's INTx Disable bit. */
	kdev->pci_2_3 = vdev->pci_2_3 && !nointxmask;
	vdev->pci_2_3 = false;
	/*
	 * And INTx itself: the core counts INTx from its virtual pin, so with
	 * the pin hidden from it every INTx SET_IRQS that reaches the core
	 * (a header rewritten by another thread after we read it) fails its
	 * validation. User space still reads the pin (vfiokit_pci_read()) and
	 * gets INTx's info from us. vconfig is rebuilt on every open.
	 */
	kdev->pin = vdev->vconfig[PCI_INTERRUPT_PIN];
	vdev->vconfig[PCI_INTERRUPT_PIN] = 0;
	kdev->line_count = 0;
	kdev->device_count = 0;
	/* No handler of ours yet: keep the device quiet (vfiokit_intx_unmask()). */
	if (kdev->pci_2_3) {
		pci_intx(vdev->pdev, 0);
		vfiokit_pci_save_intx_masked(vdev);
	}

	vfio_pci_core_finish_enable(vdev);
	vfiokit_pci_set_opened(kdev, true);
	return 0;
}

static void vfiokit_pci_close_device(struct vfio_device *core_vdev)
{
	struct vfiokit_pci_device *kdev = to_kdev(core_vdev);

	mutex_lock(&kdev->intx_lock);
	vfiokit_intx_disable(kdev);
	mutex_unlock(&kdev->intx_lock);
	vfiokit_pci_set_opened(kdev, false);
	vfio_pci_core_close_device(core_vdev);
	/*
	 * The restore in vfio_pci_core_disable() left INTx Disable set (see
	 * vfiokit_pci_save_intx_masked()); set it here too for a close
	 * without a saved state, where the core restores nothing. vfio-pci
	 * leaves it clear, and a device without a reset method that still
	 * asserts then storms its line. The core has dropped its runtime PM
	 * reference: take one for the write.
	 */
	if (kdev->pci_2_3 &&
	    pm_runtime_resume_and_get(&kdev->core.pdev->dev) >= 0) {
		pci_intx(kdev->core.pdev, 0);
		pm_runtime_put(&kdev->core.pdev->dev);
	}
}

/*
 * VFIO_DEVICE_SET_IRQS. The INTx index is decided on one copy of the user's
 * header and data. Other indexes go to vfio_pci_core, which copies the
 * header again: vfio_pci_set_irqs_ioctl(), which would take ours, is not
 * exported. A thread of the caller rewriting the header in between can thus
 * make the core enable MSI or MSI-X past our "one interrupt type at a time"
 * check; that is detected afterwards, under the same intx_lock, and our INTx
 * is torn down, so that the two are never on together. The core's own INTx
 * can never be enabled that way: it sees no INTx pin.
 */
static int vfiokit_pci_set_irqs(struct vfiokit_pci_device *kdev,
				struct vfio_irq_set __user *arg)
{
	unsigned long minsz = offsetofend(struct vfio_irq_set, count);
	struct vfio_irq_set hdr;
	size_t data_size = 0;
	u8 *data = NULL;
	int max, ret;

	if (copy_from_user(&hdr, arg, minsz))
		return -EFAULT;

	if (hdr.index != VFIO_PCI_INTX_IRQ_INDEX) {
		mutex_lock(&kdev->intx_lock);
		if (kdev->enabled &&
		    (hdr.index == VFIO_PCI_MSI_IRQ_INDEX ||
		     hdr.index == VFIO_PCI_MSIX_IRQ_INDEX) &&
		    (hdr.flags & VFIO_IRQ_SET_ACTION_TRIGGER))
			ret = -EINVAL;	/* as vfio-pci: one type at a time */
		else
			ret = vfio_pci_core_ioctl(&kdev->core.vdev,
						  VFIO_DEVICE_SET_IRQS,
						  (unsigned long)arg);
		if (kdev->enabled && kdev->core.irq_type != VFIO_PCI_NUM_IRQS)
			vfiokit_intx_disable(kdev);
		/*
		 * Turning MSI or MSI-X off clears INTx Disable
		 * (pci_intx_for_msi()); keep it set while no INTx of ours is
		 * on (vfiokit_intx_unmask()).
		 */
		if (!kdev->enabled && kdev->pci_2_3 &&
		    kdev->core.irq_type == VFIO_PCI_NUM_IRQS)
			pci_intx(kdev->core.pdev, 0);
		mutex_unlock(&kdev->intx_lock);
		return ret;
	}

	/* As the core counts INTx: none when the pin is hidden. */
	max = kdev->pin ? 1 : 0;
	ret = vfio_set_irqs_validate_and_prepare(&hdr, max, VFIO_PCI_NUM_IRQS,
						 &data_size);
	if (ret)
		return ret;
	if (data_size) {
		data = memdup_user(&arg->data, data_size);
		if (IS_ERR(data))
			return PTR_ERR(data);
	}

	mutex_lock(&kdev->intx_lock);
	ret = vfiokit_intx_set_irqs(kdev, hdr.flags, hdr.start, hdr.count, data);
	mutex_unlock(&kdev->intx_lock);
	kfree(data);
	return ret;
}

/* VFIO_DEVICE_GET_IRQ_INFO for INTx, as the core answers it (with our pin). */
static int vfiokit_pci_get_irq_info(struct vfiokit_pci_device *kdev,
				    struct vfio_irq_info __user *arg)
{
	unsigned long minsz = offsetofend(struct vfio_irq_info, count);
	struct vfio_irq_info info;

	if (copy_from_user(&info, arg, minsz))
		return -EFAULT;
	if (info.argsz < minsz || info.index != VFIO_PCI_INTX_IRQ_INDEX)
		return vfio_pci_core_ioctl(&kdev->core.vdev,
					   VFIO_DEVICE_GET_IRQ_INFO,
					   (unsigned long)arg);
	info.flags = VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE |
		     VFIO_IRQ_INFO_AUTOMASKED;
	info.count = kdev->pin ? 1 : 0;
	return copy_to_user(arg, &info, minsz) ? -EFAULT : 0;
}

static long vfiokit_pci_ioctl(struct vfio_device *core_vdev, unsigned int cmd,
			      unsigned long arg)
{
	if (cmd == VFIO_DEVICE_GET_IRQ_INFO)
		return vfiokit_pci_get_irq_info(to_kdev(core_vdev),
						(void __user *)arg);
	if (cmd == VFIO_DEVICE_SET_IRQS)
		return vfiokit_pci_set_irqs(to_kdev(core_vdev),
					    (void __user *)arg);
	return vfio_pci_core_ioctl(core_vdev, cmd, arg);
}

static int vfiokit_pci_device_feature(struct vfio_device *core_vdev, u32 flags,
				      void __user *arg, size_t argsz)
{
	struct vfiokit_pci_device *kdev = to_kdev(core_vdev);
	struct vfiokit_intx_state st;
	int ret;

	switch (flags & VFIO_DEVICE_FEATURE_MASK) {
	case VFIOKIT_DEVICE_FEATURE_INTX_STATE:
		ret = vfio_check_feature(flags, argsz, VFIO_DEVICE_FEATURE_GET,
					 sizeof(st));
		if (ret != 1)
			return ret;
		vfiokit_intx_state(kdev, &st);
		return copy_to_user(arg, &st, sizeof(st)) ? -EFAULT : 0;
	case VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY:
	case VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP:
		/*
		 * The core's runtime PM only knows how to mask its own INTx.
		 * Checked and entered under intx_lock, which enabling INTx
		 * takes, so that the two cannot cross.
		 */
		mutex_lock(&kdev->intx_lock);
		if (kdev->enabled)
			ret = -EBUSY;
		else
			ret = vfio_pci_core_ioctl_feature(core_vdev, flags, arg,
							  argsz);
		mutex_unlock(&kdev->intx_lock);
		return ret;
	default:
		return vfio_pci_core_ioctl_feature(core_vdev, flags, arg, argsz);
	}
}

/* Does [pos, pos + count) cover config byte @reg? */
static bool vfiokit_pci_covers(loff_t pos, size_t count, loff_t reg)
{
	return pos <= reg && pos + (loff_t)count > reg;
}

#define VFIOKIT_CMD_HI		(PCI_COMMAND + 1)	/* holds INTx Disable */

/* Reads of the config region show the pin hidden from the core. */
static ssize_t vfiokit_pci_read(struct vfio_device *core_vdev, char __user *buf,
				size_t count, loff_t *ppos)
{
	struct vfiokit_pci_device *kdev = to_kdev(core_vdev);
	unsigned int index = VFIO_PCI_OFFSET_TO_INDEX(*ppos);
	loff_t pos = *ppos & VFIO_PCI_OFFSET_MASK;
	ssize_t ret;

	ret = vfio_pci_core_read(core_vdev, buf, count, ppos);
	if (index == VFIO_PCI_CONFIG_REGION_INDEX && ret > 0 &&
	    vfiokit_pci_covers(pos, ret, PCI_INTERRUPT_PIN) &&
	    put_user(kdev->pin, buf + (PCI_INTERRUPT_PIN - pos)))
		return -EFAULT;
	return ret;
}

/*
 * Writes to the command register reach the core, which emulates INTx Disable
 * (virq_disabled) and read-modify-writes the other bits of the physical
 * register. Only a change of the user's INTx Disable masks or unmasks, as on
 * vfio-pci; see vfiokit_intx_command_written(). A write to PM_CTRL can take
 * the device from D3hot back to D0, where the core restores the config space
 * it saved on entering D3hot, the command register included: INTx Disable is
 * then put back as after a reset (vfiokit_intx_restored()). intx_lock keeps
 * every such write and every SET_IRQS in one order.
 */
static ssize_t vfiokit_pci_write(struct vfio_device *core_vdev,
				 const char __user *buf, size_t count,
				 loff_t *ppos)
{
	struct vfiokit_pci_device *kdev = to_kdev(core_vdev);
	struct pci_dev *pdev = kdev->core.pdev;
	unsigned int index = VFIO_PCI_OFFSET_TO_INDEX(*ppos);
	loff_t pos = *ppos & VFIO_PCI_OFFSET_MASK;
	bool was_disabled, command, pm_ctrl;
	ssize_t ret;

	if (index != VFIO_PCI_CONFIG_REGION_INDEX)
		return vfio_pci_core_write(core_vdev, buf, count, ppos);
	command = vfiokit_pci_covers(pos, count, PCI_COMMAND) ||
		  vfiokit_pci_covers(pos, count, VFIOKIT_CMD_HI);
	pm_ctrl = pdev->pm_cap &&
		  vfiokit_pci_covers(pos, count, pdev->pm_cap + PCI_PM_CTRL);
	if (!command && !pm_ctrl)
		return vfio_pci_core_write(core_vdev, buf, count, ppos);

	/* The core drops its runtime PM reference before we touch the device. */
	ret = pm_runtime_resume_and_get(&pdev->dev);
	if (ret < 0)
		return ret;
	mutex_lock(&kdev->intx_lock);
	was_disabled = kdev->core.virq_disabled;
	ret = vfio_pci_core_write(core_vdev, buf, count, ppos);
	/* Even a write that failed part way may have changed the bit. */
	if (vfiokit_pci_covers(pos, count, VFIOKIT_CMD_HI))
		vfiokit_intx_command_written(kdev, was_disabled);
	if (pm_ctrl) {
		/* As after a command write: no reset in between. */
		down_read(&kdev->core.memory_lock);
		vfiokit_intx_restored(kdev);
		up_read(&kdev->core.memory_lock);
	}
	mutex_unlock(&kdev->intx_lock);
	pm_runtime_put(&pdev->dev);
	return ret;
}

static const struct vfio_device_ops vfiokit_pci_ops = {
	.name		= "vfiokit-pci",
	.init		= vfiokit_pci_init_dev,
	.release	= vfiokit_pci_release_dev,
	.open_device	= vfiokit_pci_open_device,
	.close_device	= vfiokit_pci_close_device,
	.ioctl		= vfiokit_pci_ioctl,
#ifdef VFIOKIT_HAVE_REGION_INFO_CAPS
	.get_region_info_caps = vfio_pci_ioctl_get_region_info,
#endif
	.device_feature	= vfiokit_pci_device_feature,
	.read		= vfiokit_pci_read,
	.write		= vfiokit_pci_write,
	.mmap		= vfio_pci_core_mmap,
	.request	= vfio_pci_core_request,
	.match		= vfio_pci_core_match,
#ifdef VFIOKIT_HAVE_MATCH_TOKEN_UUID
	.match_token_uuid = vfio_pci_core_match_token_uuid,
#endif
	.bind_iommufd	= vfio_iommufd_physical_bind,
	.unbind_iommufd	= vfio_iommufd_physical_unbind,
	.attach_ioas	= vfio_iommufd_physical_attach_ioas,
	.detach_ioas	= vfio_iommufd_physical_detach_ioas,
};

/* sysfs: /sys/bus/pci/devices/<BDF>/vfiokit/ */

static void vfiokit_pci_read_state(struct device *dev,
				   struct vfiokit_intx_state *st)
{
	struct vfio_pci_core_device *vdev = dev_get_drvdata(dev);

	vfiokit_intx_state(container_of(vdev, struct vfiokit_pci_device, core),
			   st);
}

static ssize_t intx_mode_show(struct device *dev,
			      struct device_attribute *attr, char *buf)
{
	struct vfiokit_intx_state st;
	const char *mode;

	vfiokit_pci_read_state(dev, &st);
	if (st.mode == VFIOKIT_INTX_OFF)
		mode = "off";
	else if (st.mode == VFIOKIT_INTX_EXCLUSIVE)
		mode = "exclusive";
	else
		mode = st.mask_device ? "device" : "line";
	return sysfs_emit(buf, "%s\n", mode);
}
static DEVICE_ATTR_RO(intx_mode);

static ssize_t mask_device_show(struct device *dev,
				struct device_attribute *attr, char *buf)
{
	struct vfiokit_intx_state st;

	vfiokit_pci_read_state(dev, &st);
	return sysfs_emit(buf, "%u\n", st.mask_device);
}
static DEVICE_ATTR_RO(mask_device);

static ssize_t masked_show(struct device *dev, struct device_attribute *attr,
			   char *buf)
{
	struct vfiokit_intx_state st;

	vfiokit_pci_read_state(dev, &st);
	return sysfs_emit(buf, "line_held=%u dev_masked=%u masked=%u\n",
			  st.line_held, st.dev_masked, st.masked);
}
static DEVICE_ATTR_RO(masked);

static ssize_t counts_show(struct device *dev, struct device_attribute *attr,
			   char *buf)
{
	struct vfiokit_intx_state st;

	vfiokit_pci_read_state(dev, &st);
	return sysfs_emit(buf, "line=%llu device=%llu\n", st.line_count,
			  st.device_count);
}
static DEVICE_ATTR_RO(counts);

static struct attribute *vfiokit_pci_attrs[] = {
	&dev_attr_intx_mode.attr,
	&dev_attr_mask_device.attr,
	&dev_attr_masked.attr,
	&dev_attr_counts.attr,
	NULL
};

static const struct attribute_group vfiokit_pci_group = {
	.name	= "vfiokit",
	.attrs	= vfiokit_pci_attrs,
};

static const struct attribute_group *vfiokit_pci_groups[] = {
	&vfiokit_pci_group,
	NULL
};

static int vfiokit_pci_probe(struct pci_dev *pdev,
			     const struct pci_device_id *id)
{
	struct vfiokit_pci_device *kdev;
	int ret;

	kdev = vfio_alloc_device(vfiokit_pci_device, core.vdev, &pdev->dev,
				 &vfiokit_pci_ops);
	if (IS_ERR(kdev))
		return PTR_ERR(kdev);

	dev_set_drvdata(&pdev->dev, &kdev->core);
	ret = vfio_pci_core_register_device(&kdev->core);
	if (ret)
		goto out_put;
	return 0;

out_put:
	vfio_put_device(&kdev->core.vdev);
	return ret;
}

static void vfiokit_pci_remove(struct pci_dev *pdev)
{
	struct vfio_pci_core_device *vdev = dev_get_drvdata(&pdev->dev);

	vfio_pci_core_unregister_device(vdev);
	vfio_put_device(&vdev->vdev);
}

static void vfiokit_pci_reset_done(struct pci_dev *pdev)
{
	struct vfio_pci_core_device *vdev = dev_get_drvdata(&pdev->dev);

	if (vdev)
		vfiokit_intx_restored(container_of(vdev,
						   struct vfiokit_pci_device,
						   core));
}

/* The core's AER handling, and INTx Disable put right after a reset. */
static const struct pci_error_handlers vfiokit_pci_err_handlers = {
	.error_detected	= vfio_pci_core_aer_err_detected,
	.reset_done	= vfiokit_pci_reset_done,
};

static const struct pci_device_id vfiokit_pci_table[] = {
	/* Only ever bound through driver_override. */
	{ PCI_DRIVER_OVERRIDE_DEVICE_VFIO(PCI_ANY_ID, PCI_ANY_ID) },
	{}
};

static struct pci_driver vfiokit_pci_driver = {
	.name			= "vfiokit-pci",
	.id_table		= vfiokit_pci_table,
	.probe			= vfiokit_pci_probe,
	.remove			= vfiokit_pci_remove,
	.err_handler		= &vfiokit_pci_err_handlers,
	.driver_managed_dma	= true,
	.dev_groups		= vfiokit_pci_groups,
};

module_pci_driver(vfiokit_pci_driver);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("vfiokit developers");
MODULE_DESCRIPTION("VFIO PCI variant driver with adaptive INTx masking");
MODULE_VERSION(VFIOKIT_PCI_VERSION);
