"""Every way this project scores a magnifier, and the metrics they share (as big_vision keeps
`evaluators/` apart from the trainer).

  heldout.py            mode `evaluate`: held-out procedural pairs with the exact truth (motion and
                        magnification error, PSNR / SSIM, the MagPlus -> DeMagPlus round trip)
  synthetic_protocol.py Oh et al. 2018's sub-pixel and noise sweeps (the library) ...
  protocol_mode.py      ... and mode `protocol`, which runs it on the project's magnifiers
  generation.py         mode `evaluate_generation`: MagPlus -> backbone -> DeMagPlus against the
                        backbone alone on procedural micro clips
  metrics.py            flow / image metrics used here and by training, calibration and generate
  face_metrics.py       optional dlib identity and landmark metrics (loaded only when asked for)
"""
