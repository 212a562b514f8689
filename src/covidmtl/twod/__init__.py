"""2D multitask models on CT slices: Amyar et al. (Comput Biol Med 2020) and the
mask-guided attention classifier of Maftouni et al. (MGA, IISE Trans Healthc Syst Eng 2023).

Modules: :mod:`~covidmtl.twod.config` (the ``twod`` config section),
:mod:`~covidmtl.twod.slices` (``covidmtl twod-slices``: axial slices from curated volumes),
:mod:`~covidmtl.twod.data` (slice index, patient-aware split, dataset),
:mod:`~covidmtl.twod.amyar`, :mod:`~covidmtl.twod.segmenters`, :mod:`~covidmtl.twod.classifiers`
(networks), :mod:`~covidmtl.twod.losses`, :mod:`~covidmtl.twod.metrics`,
:mod:`~covidmtl.twod.variants`, :mod:`~covidmtl.twod.train` (adapter of the shared loop with
Adam and early stopping), :mod:`~covidmtl.twod.experiment` (``covidmtl twod-train``),
:mod:`~covidmtl.twod.report` (``twod-report-amyar``, ``twod-report-mga``),
:mod:`~covidmtl.twod.attribution` (``twod-attrib``: Captum maps).
"""
