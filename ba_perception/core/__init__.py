"""Pure algorithms of the stack; nothing below this package imports ROS."""
