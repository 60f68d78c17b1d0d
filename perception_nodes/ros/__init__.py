"""The thin rclpy layer: adapters that run the ROS-agnostic node cores on real ROS 2.

Only this package imports rclpy. Import :mod:`perception_nodes.ros.env` helpers before rclpy when a
process starts nodes, so discovery stays on loopback unless the user chose otherwise.
"""
