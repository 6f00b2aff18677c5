package gateway.e2e.ehrbase;

import org.springframework.boot.SpringApplication;
import org.springframework.boot.WebApplicationType;
import org.springframework.boot.actuate.autoconfigure.security.servlet.ManagementWebSecurityAutoConfiguration;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.boot.autoconfigure.r2dbc.R2dbcAutoConfiguration;
import org.springframework.boot.autoconfigure.security.servlet.SecurityAutoConfiguration;

/**
 * Runs EHRbase 2.x for the gateway's end-to-end tests.
 *
 * <p>EHRbase publishes its server modules on Maven Central but not the Spring Boot application that
 * starts them. {@code org.ehrbase.configuration.EhrBaseServerConfiguration} (module
 * {@code org.ehrbase.openehr:configuration}) pulls in the service, REST and AQL modules, EHRbase's own
 * security configuration and its Flyway migrations; this class only boots it. Spring's default security
 * and the reactive datasource are left out because EHRbase configures authentication itself and uses JDBC.
 *
 * <p>The configuration class is named, not imported: EHRbase is compiled for Java 21, and naming it keeps
 * this launcher buildable by any JDK 17+ (the machine's default), while the jar runs on Java 21+.
 */
@SpringBootApplication(
        exclude = {
            SecurityAutoConfiguration.class,
            ManagementWebSecurityAutoConfiguration.class,
            R2dbcAutoConfiguration.class
        })
public class EhrbaseTestServer {

    static final String EHRBASE_CONFIGURATION = "org.ehrbase.configuration.EhrBaseServerConfiguration";

    public static void main(String[] args) throws ClassNotFoundException {
        Class<?> ehrbase = Class.forName(EHRBASE_CONFIGURATION);
        SpringApplication application = new SpringApplication(EhrbaseTestServer.class, ehrbase);
        application.setWebApplicationType(WebApplicationType.SERVLET);
        application.run(args);
    }
}
