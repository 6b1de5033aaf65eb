"""Common training settings read by d2lite.engine.lazy_train (tools/lazyconfig_train_net.py).

Override on the command line, e.g. ``train.max_iter=100 train.device=cpu``.
"""

train = dict(
    output_dir="./output",
    # A local path or URL (detectron2://..., https://...) loaded before training.
    init_checkpoint="",
    max_iter=90000,
    amp=dict(enabled=False),  # fp16 autocast on CUDA, bf16 on CPU
    ddp=dict(  # options for DistributedDataParallel
        broadcast_buffers=False,
        find_unused_parameters=False,
        fp16_compression=False,
    ),
    checkpointer=dict(period=5000, max_to_keep=100),  # options for PeriodicCheckpointer
    eval_period=5000,
    # Validation losses (hooks.ValidationLoss): every `period` iterations and at the end,
    # the model's training losses on up to `num_batches` batches (None: all) are logged
    # as val_total_loss, val_loss_cls, ... (TensorBoard, metrics.json); period=0: off.
    # The loader is dataloader.val_loss if the config defines one, else dataloader.test
    # with mapper.is_train=True (test augmentations, annotations kept), filter_empty=True
    # and dataloader.train.total_batch_size // world_size images per batch.
    val_loss=dict(period=0, num_batches=None),
    # Warn once when total_loss exceeds `factor` times its median over the previous `window`
    # iterations (a run starting to diverge; a NaN/inf loss always stops training). factor=0: off.
    loss_explosion=dict(factor=100.0, window=20),
    log_period=20,
    # Gather and write the losses in a background thread, overlapping the optimizer step
    # (detectron2's SimpleTrainer(async_write_metrics=True)); metrics.json is the same.
    async_write_metrics=False,
    # Every vis_period iterations, put a few training images with their
    # ground-truth boxes into TensorBoard (0 = never).
    vis_period=0,
    device="cuda",
    # Keep the model's tensors in channels-last memory format (faster convolutions on CPUs).
    channels_last=False,
    # Seed of all RNGs (plus the rank); -1 draws a random one. Deterministic by default.
    # It also seeds the data stream (sampler order, per-sample augmentation seeds) and the
    # per-iteration RNG seeds, all saved in checkpoints, so --resume is exact.
    seed=0,
    # Signals that stop training after the current iteration with a checkpoint (and
    # last_checkpoint); the exit status is 128 + signal. [] keeps the default actions.
    stop_signals=["SIGTERM", "SIGINT", "SIGUSR1"],
    # Gradient clipping of the full model, after backward and before the optimizer step.
    clip_grad=dict(enabled=False, clip_type="norm", clip_value=1.0, norm_type=2.0),
    # Exponential moving average of the weights (mmengine convention:
    # ema = (1 - m) * ema + m * param). momentum_fn, if set, is a LazyCall of a
    # callable step -> m. use_for_eval evaluates the EMA weights.
    ema=dict(enabled=False, momentum=0.0002, momentum_fn=None, update_buffers=False, use_for_eval=True),
    # Extra hooks (LazyCall HookBase objects) added to the built-in ones, ordered by their
    # priority ("NORMAL" by default: after the LR scheduler, before checkpointing, evaluation
    # and the writers); see d2lite/engine/lazy_train.py. E.g. [L(MyHook)(period=10, priority="LOW")].
    hooks=[],
)
