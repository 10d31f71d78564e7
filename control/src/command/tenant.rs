//! `ipcctl tenant list`.

use ipcplane_proto::v1::ListTenantsRequest;
use ipcplane_proto::v1::tenant_service_client::TenantServiceClient;
use tonic::transport::Channel;

use super::{Filter, fetch_pages};
use crate::Error;
use crate::cli::TenantListArgs;
use crate::output::{Output, TenantView};

/// `tenant list`
pub(crate) async fn list(
    channel: Channel,
    args: &TenantListArgs,
    out: &mut Output<'_>,
) -> Result<(), Error> {
    let mut client = TenantServiceClient::new(channel);
    let filter = Filter::default().raw(args.list.filter.as_deref()).build();
    let tenants = fetch_pages(&args.list, async |page_size, page_token| {
        let request = ListTenantsRequest {
            page_size,
            page_token,
            filter: filter.clone(),
        };
        let response = client.list_tenants(request).await?.into_inner();
        Ok((response.tenants, response.next_page_token))
    })
    .await?;
    let views: Vec<_> = tenants.into_iter().map(TenantView::from).collect();
    out.list(&views)
}
