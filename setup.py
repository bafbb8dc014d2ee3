"""Packaging for diffusers-irib (src layout)."""

from setuptools import find_packages, setup

extras = {
    # Training: perceptual loss, dataset streaming, 8-bit Adam (Linux wheels only).
    "train": [
        "lpips>=0.1.4",
        "datasets>=3.0",
        "tensorboard>=2.14",
        "bitsandbytes>=0.43; platform_system == 'Linux'",
    ],
    # Evaluation: permissive metric libraries (PSNR/SSIM live in the package itself), the classical
    # baseline loader and the plots. pyiqa (NIQE, MUSIQ, CLIPIQA) is PolyForm-Noncommercial: it is
    # used when installed but never required.
    "metrics": [
        "lpips>=0.1.4",
        "torchmetrics>=1.4",
        "clean-fid>=0.1.35",
        "scikit-image>=0.22",
        "spandrel>=0.4",
        "matplotlib>=3.7",
    ],
    # The irib-web page (Gradio Blocks; gr.ImageSlider is built in from 5.0).
    "web": ["gradio>=5.0"],
    # xformers wheels pin one exact torch release: never a default dependency.
    "xformers": ["xformers"],
}
extras["dev"] = sorted(
    set(extras["train"]) - {"bitsandbytes>=0.43; platform_system == 'Linux'"}
    | set(extras["metrics"])
    | {"pytest>=8", "pytest-xdist>=3.5", "scipy>=1.10", "torchvision", "ruff>=0.17,<0.18"}
    | {"gradio>=5.0", "selenium>=4.20"}
)

setup(
    name="diffusers-irib",
    version="0.1.0.dev0",
    description=(
        "Extreme blind image restoration with a prompt-conditioned information bottleneck (IRIB), built on diffusers."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    package_dir={"": "src"},
    packages=find_packages("src"),
    package_data={"diffusers_irib": ["assets/*.png", "templates/*.md"]},
    python_requires=">=3.11",
    install_requires=[
        "torch>=2.4",
        "numpy>=1.24",
        "pillow>=10",
        "safetensors>=0.4",
        "diffusers>=0.42",
        "transformers>=4.56",
        "peft>=0.17",
        "accelerate>=1.0",
        "huggingface_hub>=0.34",
        "tqdm",
    ],
    extras_require=extras,
    entry_points={
        "console_scripts": [
            "irib-degrade=diffusers_irib.cli.degrade:main",
            "irib-restore=diffusers_irib.cli.restore:main",
            "irib-demo=diffusers_irib.cli.demo:main",
            "irib-web=diffusers_irib.cli.web:main",
            "irib-convert-osediff=diffusers_irib.cli.convert:main",
            "irib-make-testset=diffusers_irib.cli.make_testset:main",
            "irib-evaluate=diffusers_irib.evaluation.evaluate:main",
            "irib-plot-tradeoff=diffusers_irib.evaluation.plots:main",
        ]
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
