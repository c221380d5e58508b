# A local stand-in for python:3.11-slim-bookworm, for machines that cannot pull it (no registry
# in reach). scripts/build_image.sh builds it from a Debian bookworm root filesystem made with
# `debootstrap --variant=minbase` (the build context holds that tarball, nothing else) and then
# builds the repository's Dockerfile on it with --build-arg PYTHON_IMAGE=<this image>.
#
# It is laid out like the official image where the Dockerfile relies on it:
#   * `python`, `python3` and `python3.11` in /usr/local/bin, first on PATH; they are Debian's
#     interpreter (/usr/bin/python3.11, Debian's 3.11 patch release, not 3.11.14);
#   * pip, setuptools and wheel installed into /usr/local by pip itself (from the wheels Debian
#     ships for venv), so they have a RECORD and the runtime stage's `pip uninstall` removes them
#     as it does in the official image (pip cannot uninstall what dpkg installed);
#   * no EXTERNALLY-MANAGED marker (PEP 668): like the official image, the base's own pip may
#     install into the system interpreter (the build stage installs the lock's setuptools there).
FROM scratch
ADD debian-bookworm-minbase.tar /

ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates python3.11 python3.11-venv python3-pip-whl python3-setuptools-whl \
        python3-wheel-whl \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && rm /usr/lib/python3.11/EXTERNALLY-MANAGED \
 && ln -s /usr/bin/python3.11 /usr/local/bin/python3.11 \
 && ln -s python3.11 /usr/local/bin/python3 \
 && ln -s python3.11 /usr/local/bin/python \
 && wheels=/usr/share/python-wheels \
 && python "$(echo $wheels/pip-*.whl)/pip" install --no-index --no-cache-dir \
        --disable-pip-version-check --no-warn-script-location \
        $wheels/pip-*.whl $wheels/setuptools-*.whl $wheels/wheel-*.whl \
 && python -m pip --version

CMD ["python3"]
