# The image the k8s manifests run. CUDA builds of torch come from the base image; the project's
# pins install on top of it.
FROM nvcr.io/nvidia/pytorch:25.10-py3
WORKDIR /opt/pscv-dist
COPY . .
RUN pip install --no-cache-dir -e ".[deepspeed,dali,tune]" --no-deps \
 && pip install --no-cache-dir zarr==3.1.6 nibabel==5.4.2 h5py==3.16.0 kornia==0.9.0 mlflow==3.17.2 \
    deepspeed==0.19.8 nvidia-dali-cuda130==2.4.0 "ray[tune]==2.60.0" tqdm PyYAML
ENTRYPOINT []
