"""Install unisyn_v2.

Pins that matter (checked on a fresh Python 3.11 venv with the local CPU torch 2.13.0 wheel):
- dynamic-network-architectures==0.3.1: 0.4.x requires timm, which pulls an unpinned torchvision; that
  either replaces torch with a multi-GB CUDA build or, pinned beside torch 2.13.0, fails to import
  (``torchvision::nms does not exist``). 0.3.1 has the same UNet constructors and no timm dependency.
- torch is listed unpinned here; the README's install command names ``torch==2.13.0`` on the same pip
  line so a fresh venv reuses the local CPU wheel instead of downloading a CUDA build.
- batchgenerators 0.25.x pulls unittest2 (never imported) and future; harmless.
"""

from setuptools import find_packages, setup

CONSOLE_SCRIPTS = [
    "unisyn_phantom = unisyn_v2.cli.phantom:main",
    "unisyn_render_phantom = unisyn_v2.cli.phantom:render_main",
    "unisyn_plan_and_preprocess = unisyn_v2.cli.plan_and_preprocess:plan_and_preprocess_main",
    "unisyn_extract_fingerprint = unisyn_v2.cli.plan_and_preprocess:extract_fingerprint_main",
    "unisyn_plan_experiment = unisyn_v2.cli.plan_and_preprocess:plan_experiment_main",
    "unisyn_preprocess = unisyn_v2.cli.plan_and_preprocess:preprocess_main",
    "unisyn_verify_dataset = unisyn_v2.cli.plan_and_preprocess:verify_main",
    "unisyn_convert_bids = unisyn_v2.cli.convert_bids:main",
    "unisyn_train = unisyn_v2.cli.train:main",
    "unisyn_predict = unisyn_v2.cli.predict:main",
    "unisyn_evaluate = unisyn_v2.cli.evaluate:main",
    "unisyn_demo = unisyn_v2.cli.demo:main",
    "unisyn_export_model = unisyn_v2.cli.model_sharing:export_main",
    "unisyn_install_model = unisyn_v2.cli.model_sharing:install_main",
]

setup(
    name="unisyn_v2",
    version="0.1.0",
    description="Self-configuring, metadata-guided cross-modality brain image synthesis (MRI, CT, PET)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["unisyn_v2", "unisyn_v2.*"]),
    install_requires=[
        "torch>=2.1",
        "numpy>=1.24",
        "scipy>=1.10",
        "SimpleITK>=2.2",
        "nibabel>=5.0",
        "batchgenerators>=0.25,<0.26",
        "dynamic-network-architectures==0.3.1",
        "acvl-utils>=0.2,<0.3",
        "matplotlib>=3.7",
        "tqdm>=4.60",
    ],
    extras_require={"test": ["pytest>=7", "import-linter>=2.0"]},
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
)
