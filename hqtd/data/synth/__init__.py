"""The embedded mini benchmark (``hqtd synth``): procedural street scenes in the real on-disk
formats of GTA5, SYNTHIA-RAND-CITYSCAPES and Cityscapes.

:mod:`.domains` says what distinguishes the three domains (appearance, camera geometry, class
frequencies), :mod:`.render` draws one scene of a domain into an image and its labels (with the
camera and canvas of :mod:`.canvas`), and :mod:`.write` writes each dataset's files through its
layout's writers (:mod:`hqtd.data.formats`).
"""
