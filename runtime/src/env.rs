//! Attaching from a launcher's environment: `dsm run`, `mpirun`, or hand-set `DSM_*` variables.

use crate::config::Config;
use crate::error::Result;
use crate::region::Region;
use crate::session::Session;

impl Region {
    /// Attaches the region described by the environment: `DSM_COORDINATOR`, `DSM_SESSION`,
    /// `DSM_SIZE`, `DSM_NPROCS` (else `OMPI_COMM_WORLD_SIZE`, else `PMI_SIZE`), `DSM_CERT_DIR`
    /// (see [`crate::config`]). This is what processes started by `dsm run -n N` or
    /// `mpirun -n N` (with `DSM_COORDINATOR`, `DSM_SESSION` and `DSM_SIZE` exported) call.
    ///
    /// The launcher's rank variables (`DSM_RANK`, `OMPI_COMM_WORLD_RANK`, `PMI_RANK`) are
    /// informational only: [`Region::rank`] is assigned by the coordinator in attach order.
    ///
    /// ```no_run
    /// let region = dsm::Region::from_env()?;
    /// println!("rank {} of {}", region.rank(), region.nprocs());
    /// # Ok::<(), dsm::Error>(())
    /// ```
    pub fn from_env() -> Result<Region> {
        Region::attach(&Config::from_env()?)
    }
}

impl Session {
    /// Attaches the session described by the environment, like [`Region::from_env`].
    pub fn from_env() -> Result<Session> {
        Session::attach(&Config::from_env()?)
    }
}
