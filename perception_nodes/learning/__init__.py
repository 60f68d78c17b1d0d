"""Training of the learned branches (``perception-stack train <branch> --config FILE``).

* :mod:`~perception_nodes.learning.trainer`: the loop — deterministic seeds, tqdm progress, a checkpoint
  per epoch, evaluation after each epoch, resume; :func:`~perception_nodes.learning.trainer.load_trained`
  to use a trained model.
* :mod:`~perception_nodes.learning.checkpoint`: safetensors checkpoints (never pickle), verified on load.
* :mod:`~perception_nodes.learning.config`: the YAML configuration (``configs/train/*.yaml``).
* :mod:`~perception_nodes.learning.data` / :mod:`~perception_nodes.learning.grids`: samples from generated
  bags, ground-truth grids resampled onto the training grid; :mod:`~perception_nodes.learning.fixtures`:
  a tiny bag generator for tests.
* :mod:`~perception_nodes.learning.losses`: evidential losses (Beta/Dirichlet Bayes-risk CE + annealed KL,
  NIG); :mod:`~perception_nodes.learning.metrics`: IoU and ECE over observed cells.
* :mod:`~perception_nodes.learning.branches`: the registry ``BRANCHES`` (``lidar_occupancy`` so far).

Training data is synthetic (generated scenarios); real data in ``../shared/data`` is for evaluation
only, and the data loader refuses it for training. Importing this package does not import torch; its
submodules do.
"""
