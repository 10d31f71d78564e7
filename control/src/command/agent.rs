//! `ipcctl agent info|health`.

use ipcplane_proto::v1::GetAgentRequest;
use ipcplane_proto::v1::agent_service_client::AgentServiceClient;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::Error;
use crate::cli::HealthArgs;
use crate::output::{AgentView, Output};

/// `agent info`
pub(crate) async fn info(channel: Channel, out: &mut Output<'_>) -> Result<(), Error> {
    let mut client = AgentServiceClient::new(channel);
    let agent = client.get_agent(GetAgentRequest {}).await?.into_inner();
    out.one(&AgentView::from(agent))
}

/// `agent health`: prints the status; anything but SERVING is an error.
pub(crate) async fn health(
    channel: Channel,
    args: &HealthArgs,
    out: &mut Output<'_>,
) -> Result<(), Error> {
    let mut client = HealthClient::new(channel);
    let request = HealthCheckRequest {
        service: args.service.clone(),
    };
    let response = client.check(request).await?.into_inner();
    let status = ServingStatus::try_from(response.status).map_or_else(
        |_| response.status.to_string(),
        |status| status.as_str_name().to_owned(),
    );
    out.health(&status)?;
    if response.status == i32::from(ServingStatus::Serving) {
        Ok(())
    } else {
        Err(Error::NotServing(status))
    }
}
