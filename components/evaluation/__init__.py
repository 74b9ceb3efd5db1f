"""Evaluation metrics for medtune's models: image metrics for the generation path (``image_metrics``).

Import the module you need; this package imports nothing heavy by itself::

    from components.evaluation.image_metrics import psnr, ssim
"""
