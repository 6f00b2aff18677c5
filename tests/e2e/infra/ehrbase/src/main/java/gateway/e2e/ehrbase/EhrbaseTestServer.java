package gateway.e2e.ehrbase;

import org.ehrbase.configuration.EhrBaseServerConfiguration;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.WebApplicationType;
import org.springframework.boot.actuate.autoconfigure.security.servlet.ManagementWebSecurityAutoConfiguration;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.boot.autoconfigure.r2dbc.R2dbcAutoConfiguration;
import org.springframework.boot.autoconfigure.security.servlet.SecurityAutoConfiguration;
import org.springframework.context.annotation.Import;

/**
 * Runs EHRbase 2.x for the gateway's end-to-end tests.
 *
 * <p>EHRbase publishes its server modules on Maven Central but not the Spring Boot application that
 * starts them. {@link EhrBaseServerConfiguration} (module {@code org.ehrbase.openehr:configuration})
 * pulls in the service, REST and AQL modules, EHRbase's own security configuration and its Flyway
 * migrations; this class only boots it. Spring's default security and the reactive datasource are left
 * out because EHRbase configures authentication itself and uses JDBC.
 */
@SpringBootApplication(
        exclude = {
            SecurityAutoConfiguration.class,
            ManagementWebSecurityAutoConfiguration.class,
            R2dbcAutoConfiguration.class
        })
@Import(EhrBaseServerConfiguration.class)
public class EhrbaseTestServer {

    public static void main(String[] args) {
        SpringApplication application = new SpringApplication(EhrbaseTestServer.class);
        application.setWebApplicationType(WebApplicationType.SERVLET);
        application.run(args);
    }
}
