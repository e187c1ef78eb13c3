//! The DevicePlugin gRPC service kubelet calls on this plugin's socket.

use std::pin::Pin;

use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt, wrappers::WatchStream};
use tonic::{Request, Response, Status};
use tracing::{debug, info};

use crate::{
    api::{
        self, AllocateRequest, AllocateResponse, ContainerAllocateResponse,
        ContainerPreferredAllocationResponse, DevicePluginOptions, Empty, ListAndWatchResponse,
        PreStartContainerRequest, PreStartContainerResponse, PreferredAllocationRequest,
        PreferredAllocationResponse, device_plugin_server::DevicePlugin,
    },
    devices::{self, DeviceList},
    metrics::Metrics,
};

/// Options sent at registration and from GetDevicePluginOptions.
pub fn options() -> DevicePluginOptions {
    DevicePluginOptions {
        // Nothing to prepare per container: the agent hands out the IP at
        // CNI ADD.
        pre_start_required: false,
        get_preferred_allocation_available: true,
    }
}

/// Serves the device list published on a watch channel.
#[derive(Clone)]
pub struct IpDevicePlugin {
    devices: watch::Receiver<DeviceList>,
    metrics: Metrics,
}

impl IpDevicePlugin {
    /// A service reading the list from `devices`.
    pub fn new(devices: watch::Receiver<DeviceList>, metrics: Metrics) -> Self {
        IpDevicePlugin { devices, metrics }
    }
}

type ListStream = Pin<Box<dyn Stream<Item = Result<ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DevicePlugin for IpDevicePlugin {
    async fn get_device_plugin_options(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<DevicePluginOptions>, Status> {
        self.metrics.rpc("GetDevicePluginOptions", "ok");
        Ok(Response::new(options()))
    }

    type ListAndWatchStream = ListStream;

    /// The current list at once, then every change, until kubelet hangs up
    /// or the server stops.
    async fn list_and_watch(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        self.metrics.rpc("ListAndWatch", "ok");
        info!("kubelet opened ListAndWatch");
        let stream = WatchStream::new(self.devices.clone()).map(|list| {
            debug!(
                total = list.total,
                unhealthy = list.unhealthy,
                "sending device list"
            );
            Ok(list.to_response())
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_preferred_allocation(
        &self,
        request: Request<PreferredAllocationRequest>,
    ) -> Result<Response<PreferredAllocationResponse>, Status> {
        self.metrics.rpc("GetPreferredAllocation", "ok");
        let container_responses = request
            .into_inner()
            .container_requests
            .iter()
            .map(|c| ContainerPreferredAllocationResponse {
                device_i_ds: devices::preferred(
                    &c.available_device_i_ds,
                    &c.must_include_device_i_ds,
                    c.allocation_size,
                ),
            })
            .collect();
        Ok(Response::new(PreferredAllocationResponse {
            container_responses,
        }))
    }

    /// Accepts devices this plugin advertises; anything else is a clear
    /// `InvalidArgument`, so kubelet fails the container instead of starting
    /// it on a device that does not exist.
    async fn allocate(
        &self,
        request: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        let list = *self.devices.borrow();
        let request = request.into_inner();
        for c in &request.container_requests {
            if let Some(bad) = c.devices_ids.iter().find(|id| !list.contains(id)) {
                self.metrics.rpc("Allocate", "unknown_device");
                return Err(Status::invalid_argument(format!(
                    "device {bad:?} is not one of the {} sextant.io/ip devices advertised",
                    list.total
                )));
            }
        }
        self.metrics.rpc("Allocate", "ok");
        Ok(Response::new(AllocateResponse {
            container_responses: request
                .container_requests
                .iter()
                .map(|_| ContainerAllocateResponse::default())
                .collect(),
        }))
    }

    async fn pre_start_container(
        &self,
        _: Request<PreStartContainerRequest>,
    ) -> Result<Response<PreStartContainerResponse>, Status> {
        self.metrics.rpc("PreStartContainer", "ok");
        Ok(Response::new(api::PreStartContainerResponse {}))
    }
}
