package gateway.e2e.hapi;

import ca.uhn.fhir.batch2.jobs.config.Batch2JobsConfig;
import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.IValidationSupport;
import ca.uhn.fhir.jpa.api.IDaoRegistry;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.api.config.ThreadPoolFactoryConfig;
import ca.uhn.fhir.jpa.api.dao.IFhirSystemDao;
import ca.uhn.fhir.jpa.batch2.JpaBatch2Config;
import ca.uhn.fhir.jpa.binstore.DatabaseBinaryContentStorageSvcImpl;
import ca.uhn.fhir.jpa.config.HibernatePropertiesProvider;
import ca.uhn.fhir.jpa.config.r4.JpaR4Config;
import ca.uhn.fhir.jpa.config.util.HapiEntityManagerFactoryUtil;
import ca.uhn.fhir.jpa.config.util.ResourceCountCacheUtil;
import ca.uhn.fhir.jpa.dao.FulltextSearchSvcImpl;
import ca.uhn.fhir.jpa.dao.IFulltextSearchSvc;
import ca.uhn.fhir.jpa.dao.search.HSearchSortHelperImpl;
import ca.uhn.fhir.jpa.dao.search.IHSearchSortHelper;
import ca.uhn.fhir.jpa.model.config.PartitionSettings;
import ca.uhn.fhir.jpa.model.config.SubscriptionSettings;
import ca.uhn.fhir.jpa.model.dialect.HapiFhirPostgresDialect;
import ca.uhn.fhir.jpa.provider.DaoRegistryResourceSupportedSvc;
import ca.uhn.fhir.jpa.provider.IJpaSystemProvider;
import ca.uhn.fhir.jpa.provider.JpaCapabilityStatementProvider;
import ca.uhn.fhir.jpa.search.DatabaseBackedPagingProvider;
import ca.uhn.fhir.jpa.search.IStaleSearchDeletingSvc;
import ca.uhn.fhir.jpa.search.StaleSearchDeletingSvcImpl;
import ca.uhn.fhir.jpa.subscription.channel.config.SubscriptionChannelConfig;
import ca.uhn.fhir.jpa.util.ResourceCountCache;
import ca.uhn.fhir.narrative2.NullNarrativeGenerator;
import ca.uhn.fhir.rest.api.EncodingEnum;
import ca.uhn.fhir.rest.api.IResourceSupportedSvc;
import ca.uhn.fhir.rest.server.IncomingRequestAddressStrategy;
import ca.uhn.fhir.rest.server.RestfulServer;
import ca.uhn.fhir.rest.server.provider.ResourceProviderFactory;
import ca.uhn.fhir.rest.server.util.ISearchParamRegistry;
import jakarta.persistence.EntityManagerFactory;
import java.util.HashMap;
import java.util.Map;
import javax.sql.DataSource;
import org.hibernate.dialect.Dialect;
import org.springframework.beans.factory.annotation.Value;
import org.springframework.beans.factory.config.ConfigurableListableBeanFactory;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.boot.web.servlet.ServletRegistrationBean;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Import;
import org.springframework.context.annotation.Primary;
import org.springframework.orm.jpa.JpaTransactionManager;
import org.springframework.orm.jpa.LocalContainerEntityManagerFactoryBean;

/**
 * A HAPI FHIR JPA R4 server on PostgreSQL for the gateway's end-to-end tests.
 *
 * <p>HAPI publishes its JPA server as libraries, not as a runnable server, so this class wires them: the
 * R4 JPA configuration, HAPI's job framework (which the JPA layer needs for reindexing and expunge) and
 * the in-memory message channels it runs on, an entity manager on the configured datasource, and HAPI's
 * {@link RestfulServer} mounted at {@code /fhir}. Only what the gateway uses is switched on: CRUD,
 * search with database-backed paging, conditional create, versioned update with If-Match.
 *
 * <p>FHIR validation: {@code POST /fhir/{Type}/$validate} (the resource as the body, or a Parameters body
 * with a {@code resource} part) checks a resource against the R4 core specification. {@link JpaR4Config}
 * brings it: HAPI's {@code FhirInstanceValidator} (its {@code ValidationSupportConfig}) on the JPA validation
 * support chain, which holds only in-process sources: the R4 core StructureDefinitions, ValueSets and
 * CodeSystems of hapi-fhir-validation-resources-r4 ({@code DefaultProfileValidationSupport}), resources
 * stored in this server, its (empty) terminology tables, snapshot generation, in-memory value set expansion
 * and {@code CommonCodeSystemsTerminologyService} (a few common code systems, UCUM units among them). No
 * remote terminology server is configured and unknown profiles are not fetched ("the validator is set to
 * not fetch unknown profiles"), so validation never leaves the machine. A code of a code system this
 * server does not hold (SNOMED CT, LOINC) is no error unless a required binding rules it out: HAPI's chain
 * answers "CodeSystem is unknown and can't be validated" and the core validator reports that as a warning
 * (SNOMED CT codes are mostly not looked up at all; a preferred or extensible binding whose value set they
 * are not in gives information or a warning). These are HAPI's defaults, unchanged here;
 * tests/e2e/test_fhir_validator_infra.py pins them.
 *
 * <p>Settings (Spring properties, or the environment in relaxed form): {@code gateway-e2e.page-size}
 * (default 20), {@code gateway-e2e.max-page-size} (default 200). Searches are never answered from an
 * earlier search's cache, so a test sees what it just wrote.
 */
@SpringBootApplication
@Import({
    JpaR4Config.class,
    ThreadPoolFactoryConfig.class,
    JpaBatch2Config.class,
    Batch2JobsConfig.class,
    SubscriptionChannelConfig.class
})
public class HapiTestServer {

    public static void main(String[] args) {
        SpringApplication.run(HapiTestServer.class, args);
    }

    // ---- storage ---------------------------------------------------------------------------------

    @Bean
    public JpaStorageSettings storageSettings() {
        JpaStorageSettings settings = new JpaStorageSettings();
        settings.setReuseCachedSearchResultsForMillis(null);
        return settings;
    }

    @Bean
    public PartitionSettings partitionSettings() {
        return new PartitionSettings();
    }

    @Bean
    public SubscriptionSettings subscriptionSettings() {
        return new SubscriptionSettings();
    }

    @Primary
    @Bean
    public LocalContainerEntityManagerFactoryBean entityManagerFactory(
            DataSource dataSource,
            ConfigurableListableBeanFactory beanFactory,
            FhirContext fhirContext,
            JpaStorageSettings storageSettings) {
        LocalContainerEntityManagerFactoryBean factory =
                HapiEntityManagerFactoryUtil.newEntityManagerFactory(beanFactory, fhirContext, storageSettings);
        factory.setPersistenceUnitName("HAPI_PU");
        factory.setDataSource(dataSource);
        Map<String, Object> jpa = new HashMap<>();
        jpa.put("hibernate.dialect", HapiFhirPostgresDialect.class.getName());
        jpa.put("hibernate.hbm2ddl.auto", "update"); // a fresh database gets HAPI's tables at start-up
        jpa.put("hibernate.search.enabled", "false");
        jpa.put("hibernate.cache.use_second_level_cache", "false");
        jpa.put("hibernate.cache.use_query_cache", "false");
        jpa.put("hibernate.archive.scanner", "org.hibernate.boot.archive.scan.internal.DisabledScanner");
        jpa.put("hibernate.physical_naming_strategy",
                "org.hibernate.boot.model.naming.CamelCaseToUnderscoresNamingStrategy");
        jpa.put("hibernate.implicit_naming_strategy",
                "org.springframework.boot.orm.jpa.hibernate.SpringImplicitNamingStrategy");
        factory.setJpaPropertyMap(jpa);
        return factory;
    }

    @Primary
    @Bean
    public JpaTransactionManager transactionManager(EntityManagerFactory entityManagerFactory) {
        return new JpaTransactionManager(entityManagerFactory);
    }

    @Primary
    @Bean
    public HibernatePropertiesProvider hibernatePropertiesProvider() {
        Dialect dialect = new HapiFhirPostgresDialect();
        return new HibernatePropertiesProvider() {
            @Override
            public Dialect getDialect() {
                return dialect;
            }
        };
    }

    @Bean
    public DatabaseBinaryContentStorageSvcImpl binaryStorage() {
        return new DatabaseBinaryContentStorageSvcImpl();
    }

    // ---- search ----------------------------------------------------------------------------------

    @Bean
    public DatabaseBackedPagingProvider pagingProvider(
            @Value("${gateway-e2e.page-size:20}") int pageSize,
            @Value("${gateway-e2e.max-page-size:200}") int maxPageSize) {
        DatabaseBackedPagingProvider provider = new DatabaseBackedPagingProvider();
        provider.setDefaultPageSize(pageSize);
        provider.setMaximumPageSize(maxPageSize);
        return provider;
    }

    @Bean
    public IFulltextSearchSvc fulltextSearch() {
        return new FulltextSearchSvcImpl(); // inert while hibernate.search.enabled=false
    }

    @Bean
    public IHSearchSortHelper fulltextSortHelper(ISearchParamRegistry registry) {
        return new HSearchSortHelperImpl(registry);
    }

    @Bean
    public IStaleSearchDeletingSvc staleSearchCleaner() {
        return new StaleSearchDeletingSvcImpl();
    }

    @Bean(name = "myResourceCountsCache")
    public ResourceCountCache resourceCounts(IFhirSystemDao<?, ?> systemDao) {
        return ResourceCountCacheUtil.newResourceCountCache(systemDao);
    }

    @Bean
    public IResourceSupportedSvc supportedResources(IDaoRegistry daoRegistry) {
        return new DaoRegistryResourceSupportedSvc(daoRegistry);
    }

    // ---- REST ------------------------------------------------------------------------------------

    @Bean
    public RestfulServer fhirServer(
            IFhirSystemDao<?, ?> systemDao,
            ResourceProviderFactory providers,
            IJpaSystemProvider systemProvider,
            JpaStorageSettings storageSettings,
            ISearchParamRegistry searchParams,
            IValidationSupport validation,
            DatabaseBackedPagingProvider paging) {
        FhirContext context = systemDao.getContext();
        context.setNarrativeGenerator(new NullNarrativeGenerator());
        RestfulServer server = new RestfulServer(context);
        server.registerProviders(providers.createProviders());
        server.registerProvider(systemProvider);
        server.setServerConformanceProvider(
                new JpaCapabilityStatementProvider(server, systemDao, storageSettings, searchParams, validation));
        server.setDefaultResponseEncoding(EncodingEnum.JSON);
        server.setPagingProvider(paging);
        // Paging links carry the address the client used (127.0.0.1:<port>), which the gateway checks.
        server.setServerAddressStrategy(new IncomingRequestAddressStrategy());
        return server;
    }

    @Bean
    public ServletRegistrationBean<RestfulServer> fhirServlet(RestfulServer server) {
        ServletRegistrationBean<RestfulServer> registration = new ServletRegistrationBean<>(server, "/fhir/*");
        registration.setLoadOnStartup(1);
        return registration;
    }
}
