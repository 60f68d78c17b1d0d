# x86-64 image on a system ROS 2 install (Jazzy/Kilted base images work alike). Jetson images come later.
#   docker build -t perception-nodes .
#   docker run --rm -it --network host perception-nodes ros2 launch perception_bringup perception.launch.py
# Not built in CI (no Docker engine there); `make test` covers the same code without containers.
ARG ROS_DISTRO=kilted
FROM ros:${ROS_DISTRO}-ros-base

RUN apt-get update && apt-get install -y --no-install-recommends python3-pip python3-venv \
    ros-${ROS_DISTRO}-tf2-msgs ros-${ROS_DISTRO}-launch-ros && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/perception_nodes
COPY pyproject.toml README.md ./
COPY perception_nodes perception_nodes
COPY engines engines
COPY calibration calibration
COPY launch launch
COPY ros_ws/src ros_ws/src
RUN pip3 install --break-system-packages --no-cache-dir -e . "rosbags==0.11.9" "mcap==1.6.0" "tqdm==4.70.1"
RUN . /opt/ros/${ROS_DISTRO}/setup.sh && cd ros_ws && colcon build --cmake-args -DBUILD_TESTING=OFF

RUN printf '. /opt/ros/%s/setup.sh\n. /opt/perception_nodes/ros_ws/install/setup.sh\n' "${ROS_DISTRO}" >> /etc/bash.bashrc
ENV ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
CMD ["bash"]
