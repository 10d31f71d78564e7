//! `ipcctl client list`.

use ipcplane_proto::v1::ListClientsRequest;
use ipcplane_proto::v1::client_service_client::ClientServiceClient;
use tonic::transport::Channel;

use super::{Filter, fetch_pages};
use crate::Error;
use crate::cli::ClientListArgs;
use crate::output::{ClientView, Output};

/// `client list`
pub(crate) async fn list(
    channel: Channel,
    args: &ClientListArgs,
    out: &mut Output<'_>,
) -> Result<(), Error> {
    let mut client = ClientServiceClient::new(channel);
    let filter = Filter::default()
        .string("tenant", args.tenant.as_deref())
        .number("pid", args.pid)
        .raw(args.list.filter.as_deref())
        .build();
    let clients = fetch_pages(&args.list, async |page_size, page_token| {
        let request = ListClientsRequest {
            page_size,
            page_token,
            filter: filter.clone(),
        };
        let response = client.list_clients(request).await?.into_inner();
        Ok((response.clients, response.next_page_token))
    })
    .await?;
    let views: Vec<_> = clients.into_iter().map(ClientView::from).collect();
    out.list(&views)
}
