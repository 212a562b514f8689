"""3D deep models of COVID-MTL (Bao et al., Pattern Recognition 2022, arXiv 2012.05509).

Modules, one concern each:

- :mod:`~covidmtl.deep.config`       the ``deep`` config section (every knob, paper defaults)
- :mod:`~covidmtl.deep.shift3d`      Shift3D augmentation layer (COVID-MTL Algorithm 2)
- :mod:`~covidmtl.deep.squeezenet3d` Fire modules and SqueezeNet3D (Koepueklue et al. 2019, v1.1 layout)
- :mod:`~covidmtl.deep.shiftnet3d`   ShiftNet3D = SqueezeNet3D with Shift3D on low-level feature maps
- :mod:`~covidmtl.deep.resnet3d`     ResNet3D-34 (MONAI ResNet, BasicBlock [3, 4, 6, 3])
- :mod:`~covidmtl.deep.mtl`          COVID-MTL: shared ShiftNet3D trunk, task layers, radiomics FNN
- :mod:`~covidmtl.deep.losses`       random-weighted (Dirichlet), uncertainty and mean multitask losses
- :mod:`~covidmtl.deep.variants`     the named experiment variants and the model factory
- :mod:`~covidmtl.deep.data`         inputs, validation, dataset and MONAI transforms
- :mod:`~covidmtl.deep.train`        generic training loop (checkpoints, resume, CSV log, AMP)
- :mod:`~covidmtl.deep.evaluate`     predictions and metrics
- :mod:`~covidmtl.deep.experiment`   ``covidmtl deep-train``
- :mod:`~covidmtl.deep.report`       ``covidmtl deep-report`` (Tables 3/4, Figures 4/9/10)
- :mod:`~covidmtl.deep.cam`          ``covidmtl deep-cam`` (Figure 7, Grad-CAM)
"""
