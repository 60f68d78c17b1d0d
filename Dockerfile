# syntax=docker/dockerfile:1
# The perception graph on a system ROS 2 install. One file, two targets chosen by a build argument:
#
#   docker build -t perception-nodes .                                   # x86-64: ROS 2 Kilted (Ubuntu 24.04)
#   docker build -t perception-nodes:jetson --build-arg TARGET=jetson .  # Jetson Orin: JetPack 6 (L4T r36),
#                                                                        # ROS 2 Humble (Ubuntu 22.04), arm64
#   docker run --rm -it --network host --ipc host perception-nodes \
#       ros2 launch perception_bringup perception.launch.py [params_file:=FILE] [use_sim_time:=true]
#
# Build the Jetson image on a Jetson, or elsewhere with `docker buildx build --platform linux/arm64`; run it
# with `--runtime nvidia`. BuildKit (Docker's default builder) builds only the selected base stage.
# docker/entrypoint.sh sources ROS and the workspace for any command. --ipc host lets Fast DDS use shared
# memory with ROS processes outside the container. Only the core's Python dependencies are installed
# (requirements/core.txt, or docker/requirements-jetson.txt for Python 3.10); every pip and apt install is
# pinned (tests/test_docker.py checks this, the COPY sources, the entrypoint and .dockerignore).
# Not built in CI (no Docker engine there); `make test` covers the same code without containers.
ARG TARGET=x86

# --- x86-64: the official ROS image (ros_base has tf2_msgs, launch_ros and colcon) --------------------------
FROM ros:kilted-ros-base-noble AS base-x86
ENV ROS_DISTRO=kilted \
    PN_REQUIREMENTS=requirements/core.txt
RUN apt-get update && apt-get install -y --no-install-recommends "python3-pip=24.0+dfsg-1ubuntu1*" \
    && rm -rf /var/lib/apt/lists/*

# --- Jetson: NVIDIA's JetPack base (L4T r36, CUDA/cuDNN/TensorRT) with ROS 2 Humble from the ROS apt repo ---
FROM nvcr.io/nvidia/l4t-jetpack:r36.4.0 AS base-jetson
ENV ROS_DISTRO=humble \
    PN_REQUIREMENTS=docker/requirements-jetson.txt \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    DEBIAN_FRONTEND=noninteractive
ADD https://raw.githubusercontent.com/ros/rosdistro/master/ros.key /usr/share/keyrings/ros-archive-keyring.asc
RUN echo "deb [arch=arm64 signed-by=/usr/share/keyrings/ros-archive-keyring.asc] http://packages.ros.org/ros2/ubuntu jammy main" \
        > /etc/apt/sources.list.d/ros2.list \
    && apt-get update && apt-get install -y --no-install-recommends \
        "ros-humble-ros-base=0.10.0-1jammy*" "python3-pip=22.0.2+dfsg-1ubuntu0*" "build-essential=12.9ubuntu3*" \
    && rm -rf /var/lib/apt/lists/*

# --- the selected base + the project ------------------------------------------------------------------------
FROM base-${TARGET} AS runtime
ENV PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /opt/perception_nodes
COPY requirements requirements
COPY docker docker
RUN python3 -m pip install -r "$PN_REQUIREMENTS"
COPY pyproject.toml README.md ./
COPY perception_nodes perception_nodes
COPY engines engines
COPY calibration calibration
COPY launch launch
COPY ros_ws/src ros_ws/src
# editable: the package finds calibration/ beside it; --no-deps: the pins above are the dependencies
RUN python3 -m pip install --no-deps -e .
# tf2_msgs comes with ROS here: build the stand-in in ros_ws only where it is missing (as scripts/setup.sh)
RUN . "/opt/ros/$ROS_DISTRO/setup.sh" \
    && if [ -f "/opt/ros/$ROS_DISTRO/share/tf2_msgs/package.xml" ]; then touch ros_ws/src/tf2_msgs/COLCON_IGNORE; fi \
    && cd ros_ws && colcon build --event-handlers console_direct- --cmake-args -DBUILD_TESTING=OFF \
    && rm -rf build log

ENV ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
ENTRYPOINT ["/opt/perception_nodes/docker/entrypoint.sh"]
CMD ["bash"]
