"""Datasets and batching: real loaders, offline stand-ins, grouped datasets, a GPU-resident batch iterator."""
from kdteach.data.batches import Batch, Batches, random_translate, translate_by
from kdteach.data.mnist import find_mnist_root, load_digits_standin, load_mnist, load_mnist_or_standin, to_float
from kdteach.data.grouped import *  # noqa: F401,F403  (GroupedData, waterbirds_like, colored_digits, waterbirds, celeba)
from kdteach.data.text import *  # noqa: F401,F403  (text stand-in, MultiNLI, CivilComments)
