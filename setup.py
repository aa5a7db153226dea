"""Install mhtma: the fused masked-temperature attention kernels and the inpainting toolkit."""
from setuptools import find_packages, setup

setup(
    name="mhtma",
    version="0.1.0",
    description=(
        "Masked temperature attention as fused Triton kernels, and the MHTMA image-inpainting GAN "
        "(Zhou, Gong, Zeng: Learning to Scale Temperature in Masked Self-Attention for Image Inpainting)"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["mhtma_kernels", "mhtma_kernels.*", "mhtma_model", "mhtma_model.*"]),
    package_data={"mhtma_model": ["configs/*.yaml"]},
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        # A CPU-only torch wheel does not bring Triton; the fused kernels (and their CPU interpreter) need it.
        "triton>=3.0",
        "numpy",
        "pillow",
        "pyyaml",
        "tqdm",
        "tensorboard",
        "scikit-image",
        "scipy",
        "safetensors",  # Inpainter.save_pretrained / from_pretrained
    ],
    extras_require={
        # Everything the full test suite exercises (the optional parts included).
        "dev": ["pytest", "pytest-benchmark", "pytest-timeout", "matplotlib", "opencv-python-headless",
                "gradio", "gradio_client", "selenium", "onnx", "onnxruntime", "onnxscript", "lpips", "scikit-learn"],
        "classical": ["opencv-python-headless"],  # Telea / Navier-Stokes reference rows in mhtma-eval
        # mhtma-eval's LPIPS (the package's linear layers) and P-IDS/U-IDS (a linear SVM)
        "eval": ["lpips", "scikit-learn"],
        "ui": ["gradio"],                          # mhtma-ui
        "bench": ["pytest", "pytest-benchmark", "matplotlib"],
        # mhtma-export: ONNX through torch's dynamo exporter (needs onnxscript), checked with onnxruntime
        "export": ["onnx", "onnxruntime", "onnxscript"],
    },
    entry_points={
        "console_scripts": [
            "mhtma-train=mhtma_model.cli.train:main",
            "mhtma-eval=mhtma_model.cli.evaluate:main",
            "mhtma-inpaint=mhtma_model.cli.inpaint:main",
            "mhtma-ui=mhtma_model.cli.ui:main",
            "mhtma-export=mhtma_model.cli.export:main",
            "mhtma-masks=mhtma_model.cli.masks:main",
        ]
    },
)
