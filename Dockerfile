# QLoRA Lab on a GPU box or a Hugging Face Space (sdk: docker, app_port: 8501).
# The torch wheel from PyPI bundles its CUDA libraries; the base image supplies the CUDA
# runtime layout the driver (mounted by the host) expects.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv make \
    && rm -rf /var/lib/apt/lists/*

# Spaces run the container as UID 1000; Ubuntu 24.04 ships a user with that id, replace it.
RUN userdel -r ubuntu 2>/dev/null; useradd -m -u 1000 user
USER user
# The embedded model is prepared into ~/.cache/qlora-lab at build time. At run time a Space with
# persistent storage keeps runs, downloads and the cache in /data (lab/paths.py) and reuses this copy.
ENV HOME=/home/user
WORKDIR /home/user/app

COPY --chown=user requirements.txt Makefile ./
RUN make setup-deps PYTHON=python3
COPY --chown=user . .
RUN make setup PYTHON=python3

EXPOSE 8501
# `lab serve` starts Streamlit with what the environment needs: inside a Space (SPACE_ID is set) public
# mode, and server.enableXsrfProtection=false so uploads work in the Space's iframe (see the README).
CMD [".venv/bin/python", "-m", "lab", "serve", "--port", "8501"]
