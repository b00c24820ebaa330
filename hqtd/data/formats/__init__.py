"""The on-disk formats: the raw layouts of GTA5, SYNTHIA-RAND-CITYSCAPES and Cityscapes (METHOD.md
§1) and the prepared folder's manifest.

One module per dataset knows its layout both ways: which folders hold images and labels, how a
sample id and its file names are spelled, what a label PNG must look like and how its raw ids
become trainIds (read by ``hqtd prepare``), and how raw ids are encoded into a label file
(written by ``hqtd synth``): :mod:`.gta5`, :mod:`.synthia`, :mod:`.cityscapes`. :mod:`.raw`
finds a raw dataset's samples and decodes its labels by dataset name; :mod:`.png` holds the PNG
reading, checking and encoding they share.

This module holds constants only and imports nothing, so that the command line and the workflow
(:mod:`hqtd.grid`) name the datasets without loading numpy, cv2 or torch.
"""

#: The raw datasets ``hqtd prepare`` reads, each with its module in this package.
DATASETS = ("gta5", "synthia", "cityscapes")
#: The file that lists a prepared dataset's samples (``hqtd prepare`` writes it, the training
#: datasets read it).
MANIFEST_NAME = "manifest.json"
