"""Topic names of the graph in one place (Autoware-style namespaces: /sensing, /perception)."""

LIDAR_POINTS = "/sensing/lidar/points"
CAMERA_IMAGE = "/sensing/camera/{side}/image_rect"
CAMERA_INFO = "/sensing/camera/{side}/camera_info"
TF_STATIC = "/tf_static"
GT_OBJECTS = "/ground_truth/objects"
GT_MARKERS = "/ground_truth/markers"
OBSTACLE_POINTS = "/perception/obstacle_segmentation/pointcloud"
OCCUPANCY_GRID = "/perception/occupancy_grid"
OCCUPANCY_UNCERTAINTY = "/perception/occupancy_grid/uncertainty"
DIAGNOSTICS = "/diagnostics"
TF = "/tf"
SCENARIO_INFO = "/scenario/info"
GT_OCCUPANCY = "/ground_truth/occupancy"  # 100 occupied / 0 free, base_link, the occupancy node's grid
GT_VISIBILITY = "/ground_truth/occupancy/visibility"  # 100 seen by a fault-free LiDAR cast / 0 not
GT_FAULT_REGION = "/ground_truth/occupancy/lidar_fault"  # 100 where an injected LiDAR fault acts / 0 not
GT_DEPTH = "/ground_truth/camera/left/depth"  # 32FC1 metres
GT_DISPARITY = "/ground_truth/camera/left/disparity"  # 32FC1 pixels
GT_ODOMETRY = "/ground_truth/odometry"
GT_CURVATURE = "/ground_truth/curvature"  # control target, 1/m
GT_PATH = "/ground_truth/path"
CLOCK = "/clock"

POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
IMAGE = "sensor_msgs/msg/Image"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
OCCUPANCY_GRID_TYPE = "nav_msgs/msg/OccupancyGrid"
DIAGNOSTIC_ARRAY = "diagnostic_msgs/msg/DiagnosticArray"
MARKER_ARRAY = "visualization_msgs/msg/MarkerArray"
TF_MESSAGE = "tf2_msgs/msg/TFMessage"
FLOAT64_STAMPED = "perception_interfaces/msg/Float64Stamped"
DETECTIONS = "perception_interfaces/msg/Detection3DArray"
ODOMETRY_TYPE = "nav_msgs/msg/Odometry"
PATH_TYPE = "nav_msgs/msg/Path"
STRING_TYPE = "std_msgs/msg/String"
