// SPDX-License-Identifier: GPL-2.0-only
/*
 * Test helper for the vfiokit test bed: a second handler on an interrupt
 * line, added and removed at will, to drive the hand-over between line-level
 * and device-level masking.
 *
 *   echo 22 > /sys/module/vfiokit_test_sharer/parameters/irq   # share line 22
 *   echo 0  > /sys/module/vfiokit_test_sharer/parameters/irq   # leave it
 *
 * The handler never claims an interrupt. Never load this on a real machine.
 */

#include <linux/interrupt.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/mutex.h>

static DEFINE_MUTEX(sharer_lock);	/* serializes request/free */
static unsigned int sharer_irq;
static atomic_t sharer_calls = ATOMIC_INIT(0);

static irqreturn_t sharer_handler(int irq, void *dev_id)
{
	atomic_inc(&sharer_calls);
	return IRQ_NONE;
}

static int sharer_set(const char *val, const struct kernel_param *kp)
{
	unsigned int irq;
	int ret;

	ret = kstrtouint(val, 0, &irq);
	if (ret)
		return ret;

	mutex_lock(&sharer_lock);
	if (sharer_irq) {
		free_irq(sharer_irq, &sharer_irq);
		sharer_irq = 0;
	}
	if (irq) {
		ret = request_irq(irq, sharer_handler, IRQF_SHARED,
				  "vfiokit-test-sharer", &sharer_irq);
		if (!ret)
			sharer_irq = irq;
	}
	mutex_unlock(&sharer_lock);
	return ret;
}

static int sharer_get(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%u\n", READ_ONCE(sharer_irq));
}

static const struct kernel_param_ops sharer_ops = {
	.set = sharer_set,
	.get = sharer_get,
};
module_param_cb(irq, &sharer_ops, NULL, 0644);
MODULE_PARM_DESC(irq, "interrupt line to share (0: none)");

static int calls_get(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%d\n", atomic_read(&sharer_calls));
}

static const struct kernel_param_ops calls_ops = {
	.get = calls_get,
};
module_param_cb(calls, &calls_ops, NULL, 0444);
MODULE_PARM_DESC(calls, "times the handler ran");

static void __exit sharer_exit(void)
{
	mutex_lock(&sharer_lock);
	if (sharer_irq)
		free_irq(sharer_irq, &sharer_irq);
	sharer_irq = 0;
	mutex_unlock(&sharer_lock);
}

static int __init sharer_init(void)
{
	return 0;
}

module_init(sharer_init);
module_exit(sharer_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vfiokit test bed: a removable second handler on an IRQ line");
