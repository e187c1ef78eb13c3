//! Paths and names shared with kubelet and the node agent.

/// Directory where kubelet serves `kubelet.sock` and plugins serve theirs.
pub const DEVICE_PLUGIN_DIR: &str = "/var/lib/kubelet/device-plugins";
/// Kubelet's Registration socket, inside [`DEVICE_PLUGIN_DIR`].
pub const KUBELET_SOCKET: &str = "kubelet.sock";
/// This plugin's socket, inside [`DEVICE_PLUGIN_DIR`].
pub const PLUGIN_SOCKET: &str = "sextant-ip.sock";
/// The extended resource this plugin advertises.
pub const RESOURCE_NAME: &str = "sextant.io/ip";
