//! Clearing the cluster for an uninstall (`tka-server drain`): every Session ended like a logout,
//! then whatever is labelled `managed-by=tka` and tka's finalizer wherever it is left.
//!
//! Only an administrator's explicit command runs this: a login in flight loses its objects. It
//! writes no Session status (the admission policy reserves that to the server) and never
//! deletes an object that is not labelled as tka's, Sessions aside.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
use kube::ResourceExt;

use super::KubernetesIssuer;
use crate::domain::SessionName;
use crate::issuer::IssueError;
use crate::kubernetes::FINALIZER;
use crate::kubernetes::error::issue_error;
use crate::kubernetes::objects::{self, delete_uid, managed_selector};
use crate::reconciler::RemovalReason;

impl KubernetesIssuer {
    /// Ends every Session on the cluster (labelled or not) like a logout: ServiceAccount,
    /// bindings, Session, finalizer. What `tka-server drain` does before an uninstall. Unlike a
    /// logout it writes no status (an administrator running it is not allowed to, by the
    /// admission policy that reserves Session writes to the server), so it only deletes and
    /// removes finalizers.
    pub async fn revoke_all(&self) -> Result<Vec<SessionName>, IssueError> {
        let sessions = self
            .apis
            .sessions
            .list(&kube::api::ListParams::default())
            .await
            .map_err(|e| issue_error("list every Session", e))?
            .items;
        let mut ended = Vec::new();
        for session in sessions {
            self.end(&session, None, &RemovalReason::Revoked).await?;
            ended.extend(session.session_name());
        }
        Ok(ended)
    }

    /// Removes what [`KubernetesIssuer::revoke_all`] could not: ServiceAccounts and bindings
    /// labelled `managed-by=tka` whatever their session, and tka's finalizer from any Session
    /// still there (so deleting the CRD never hangs). Returns how many objects it changed.
    /// Only for an uninstall: a login in flight loses its objects.
    pub async fn remove_leftovers(&self) -> Result<usize, IssueError> {
        let selector = managed_selector();
        let fail = |what: &'static str| move |e| issue_error(what, e);
        // Only counted, never reported: the reason is what the objects are once tka goes.
        let reason = RemovalReason::Orphan;
        let mut changed = 0;
        changed += objects::delete_labelled::<ServiceAccount>(&self.apis, &selector, &reason)
            .await
            .map_err(fail("delete tka's ServiceAccounts"))?
            .len();
        changed += objects::delete_labelled::<ClusterRoleBinding>(&self.apis, &selector, &reason)
            .await
            .map_err(fail("delete tka's ClusterRoleBindings"))?
            .len();
        changed += objects::delete_labelled::<RoleBinding>(&self.apis, &selector, &reason)
            .await
            .map_err(fail("delete tka's RoleBindings"))?
            .len();
        let sessions = self
            .apis
            .sessions
            .list(&kube::api::ListParams::default())
            .await
            .map_err(fail("list every Session"))?
            .items;
        for session in sessions {
            let Some(uid) = session.uid() else { continue };
            let had = session.finalizers().iter().any(|f| f == FINALIZER);
            objects::remove_finalizer(&self.apis.sessions, &session.name_any(), &uid, None)
                .await
                .map_err(fail("remove tka's finalizer from a Session"))?;
            delete_uid(&self.apis.sessions, &session.name_any(), &uid)
                .await
                .map_err(fail("delete a Session"))?;
            changed += usize::from(had) + 1;
        }
        Ok(changed)
    }
}
