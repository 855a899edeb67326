"""Datasets and batching: real loaders, offline stand-ins, grouped datasets, a GPU-resident batch iterator.

Modules: batches (Batches, on-device augmentation), mnist (MNIST and its offline stand-in), grouped (the grouped
image datasets by name) with grouped_data (GroupedData and what its loaders share), standins (waterbirds_like,
colored_digits) and real_images (Waterbirds, CelebA), text (tokenizing, encoding, TextData) with text_datasets
(MultiNLI, CivilComments, the text stand-in). Their public names are importable from kdteach.data itself.
"""
from kdteach.data.batches import Batch, Batches, random_translate, translate_by
from kdteach.data.mnist import find_mnist_root, load_digits_standin, load_mnist, load_mnist_or_standin, to_float
from kdteach.data.grouped import *  # noqa: F401,F403  (GroupedData, waterbirds_like, colored_digits, waterbirds, celeba)
from kdteach.data.text import *  # noqa: F401,F403  (text stand-in, MultiNLI, CivilComments)
