"""DeepSC-COVID (Wang et al., IEEE TMI 40(9):2463-2476, 2021): joint 3D lesion segmentation and
3-class diagnosis (COVID-19, CAP, non-pneumonia) with cross-stitch features and a task-aware loss.

Modules, one concern each:

- :mod:`~covidmtl.deepsc.config`      the ``deepsc`` config section (every knob, paper defaults)
- :mod:`~covidmtl.deepsc.data`        input checks, preprocessing (section V-A), patches, datasets
- :mod:`~covidmtl.deepsc.networks`    inception blocks, cross-stitch unit, lesion and classification
                                      subnets, evidence masks, the MONAI baselines
- :mod:`~covidmtl.deepsc.losses`      Dice + focal, weighted cross-entropy, task-aware loss, total
- :mod:`~covidmtl.deepsc.variants`    the named experiments (ablations, baselines) and their stages
- :mod:`~covidmtl.deepsc.train`       staged training on the shared loop of :mod:`covidmtl.deep.train`
- :mod:`~covidmtl.deepsc.inference`   whole-scan prediction (stitched patches), evidence masks, timing
- :mod:`~covidmtl.deepsc.metrics`     whole-volume segmentation metrics (MONAI), diagnosis metrics
- :mod:`~covidmtl.deepsc.experiment`  ``covidmtl deepsc-train``
- :mod:`~covidmtl.deepsc.report`      ``covidmtl deepsc-report`` (Tables II, III; Figures 7-10)
- :mod:`~covidmtl.deepsc.figures`     the figures
- :mod:`~covidmtl.deepsc.findings`    ``covidmtl deepsc-findings`` (section III statistics, Figure 1)
- :mod:`~covidmtl.deepsc.toydata`     a tiny toy cohort for tests and the benchmark
"""
